"""The embedded default: a probe corpus from registry data and a small CLIP the project trains."""
