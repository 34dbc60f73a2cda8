"""The offline worker: the only writer of the store. Imports torch/open_clip lazily where it can."""
import subprocess
from functools import cache
from pathlib import Path


@cache
def code_version() -> str:
    """The git commit of the worker's code (recorded with every run), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
