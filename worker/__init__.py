"""The offline worker: the only writer of the store. Imports torch/open_clip lazily where it can."""
