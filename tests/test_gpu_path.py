"""The GPU path's bugs, each reproduced on the CPU: a resume with loader workers, non-finite
activations (fp16 overflow), the pinned batch handed to the device copy, precision in the job's
fingerprint, and JPEG decoding through torchvision (the GPU decoder's code path, run with device="cpu")."""
import pytest
import torch
from sqlalchemy import select

from app.db import DatasetExample, UnitStats
from test_examples import make_corpus, same, settings_at, snapshot
from worker import examples
from worker.examples import ExampleOptions, run_examples
from worker.store import open_store


class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint."""


def interrupt_after_checkpoints(monkeypatch, n: int) -> None:
    """Let the run save `n` checkpoints, then stop it (the checkpoint stays, as after a SIGKILL)."""
    real, saved = examples.save_checkpoint, []

    def save_then_stop(path, progress):
        real(path, progress)
        saved.append(progress.cursor)
        if len(saved) == n:
            raise Interrupted

    monkeypatch.setattr(examples, "save_checkpoint", save_then_stop)


def test_a_run_resumed_with_two_loader_workers_gives_the_uninterrupted_store(tmp_path, tiny_rn, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=20, bad=False)
    opts = ExampleOptions(k=3, batch_size=4, samples=6, workers=0, progress=False, checkpoint_seconds=0)
    resumed = open_store(settings_at(tmp_path / "resumed"))
    with monkeypatch.context() as m:
        interrupt_after_checkpoints(m, 1)  # cursor 1: the resumed run starts at batch 1, not 0
        with pytest.raises(Interrupted):
            run_examples(resumed, tiny_rn, "tiny", corpus, ["layer1"], opts)
    two = ExampleOptions(**{**vars(opts), "workers": 2})
    report = run_examples(resumed, tiny_rn, "tiny", corpus, ["layer1"], two)
    assert report["images"] == 20
    reference = open_store(settings_at(tmp_path / "reference"))
    run_examples(reference, tiny_rn, "tiny", corpus, ["layer1"], opts)
    same(snapshot(resumed, runs=False), snapshot(reference, runs=False))
