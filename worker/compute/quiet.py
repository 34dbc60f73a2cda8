"""Model loading without the libraries' expected noise.

A CLIP whose text tower is a Hugging Face model without its pooler (the demo's MiniLM: open_clip pools by
itself) makes transformers print a LOAD REPORT table of the two pooler weights it skips ("UNEXPECTED
pooler.dense") and a progress bar, and open_clip log "Model … initialized partially" on the root logger.
Both are expected for such a tower and say nothing the user can act on, so loading hides them; errors
still show.
"""
import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # no HF text tower possible: nothing to hush
        hf_logging = None
    if hf_logging is not None:
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        if hf_logging is not None:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
