"""The pipeline: the stage contract, the runner and its executors (serial, Ray)."""
