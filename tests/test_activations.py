"""The activation matrix the examples stage writes in its pass: every unit's pooled activation on every
image, equal to a brute-force forward; listing ranges add up to one run; rows written after the last checkpoint
of a killed run are cut away on resume."""
import json

import numpy as np
import pytest

from app.activations import ActivationMatrix, MatrixError, sha_range
from store.writes import open_store
from tests.test_examples import brute_force, hash64, make_corpus, settings_at
from worker.analyses.activations import stored_matrix
from worker.analyses.examples import ExampleOptions, Progress, load_checkpoint, run_examples


def by_hash(matrix: ActivationMatrix) -> dict[int, np.ndarray]:
    return dict(zip(matrix.hashes.tolist(), matrix.dense(), strict=True))


def test_matrix_equals_the_brute_force_pooled_activations(store, tiny_rn, tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    run_examples(store, tiny_rn, "tiny", corpus, ["layer4"], ExampleOptions(k=4, batch_size=7, workers=0,
                                                                            progress=False, samples=0))
    matrix = stored_matrix(store, "tiny", "layer4")
    shas, high, _, _ = brute_force(tiny_rn, corpus, "layer4", "mean")
    assert matrix.shape == (30, 512) and len(set(matrix.hashes.tolist())) == 30  # the copy counted once
    rows = by_hash(matrix)
    for sha, want in zip(shas, high.numpy(), strict=True):
        assert np.allclose(rows[hash64(sha)], want, rtol=2e-3, atol=2e-3)  # fp16
    sidecar = json.loads((matrix.folder / "part-0of1.json").read_text())
    assert sidecar["rows"] == 30 and sidecar["complete"] and sidecar["reduce"] == "mean"
    lo, hi = sha_range(hash64(shas[0]))
    assert lo <= shas[0] < hi
    direction = np.random.default_rng(0).normal(size=512)
    assert np.allclose(matrix.project(direction), matrix.dense() @ direction, rtol=1e-4, atol=1e-4)


def test_listing_ranges_together_hold_the_single_run_matrix(store, tiny_rn, tmp_path):
    """The examples stage (ranges of 8 entries: 34 entries, five parts) against one stream of the corpus."""
    from pathlib import Path

    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import run_pipeline
    from worker.stages.examples import Examples

    corpus = make_corpus(tmp_path / "corpus", n=30)
    common = {"k": 4, "batch_size": 5, "workers": 0, "progress": False, "samples": 0}
    ctx = BuildContext(store, tiny_rn, "tiny", corpus, ("layer1",), {"examples": {**common, "range_entries": 8}},
                       (Path(__file__).parent / "model_configs",), progress=False)
    (got,) = run_pipeline(ctx, stages=[Examples()], echo=lambda _: None)
    assert got.status == "done", got
    single = open_store(settings_at(tmp_path / "single"))
    run_examples(single, tiny_rn, "tiny", corpus, ["layer1"], ExampleOptions(**common))
    ranged, whole = stored_matrix(store, "tiny", "layer1"), stored_matrix(single, "tiny", "layer1")
    assert len(list(ranged.folder.glob("part-*of5.json"))) == 5
    assert ranged.shape[0] == whole.shape[0] + 1 == 31  # the copy in a later range has a row of its own there
    assert by_hash(ranged).keys() == by_hash(whole).keys() and len(by_hash(whole)) == 30
    assert all(np.array_equal(by_hash(ranged)[h], v) for h, v in by_hash(whole).items())


def test_rows_after_the_last_checkpoint_of_a_killed_run_are_not_trusted(tmp_path, tiny_rn, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=20, bad=False)
    killed = open_store(settings_at(tmp_path / "killed"))
    opts = ExampleOptions(k=4, batch_size=4, workers=0, progress=False, samples=0, checkpoint_seconds=0)
    absorb = Progress.absorb

    def dies_in_batch_3(self, batch, *args):
        absorb(self, batch, *args)  # batch 3's rows go to the files, its checkpoint never comes
        if batch.number == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "absorb", dies_in_batch_3)
    with pytest.raises(KeyboardInterrupt):
        run_examples(killed, tiny_rn, "tiny", corpus, ["layer2"], opts)
    monkeypatch.setattr(Progress, "absorb", absorb)
    (checkpoint,) = (tmp_path / "killed" / "data" / "checkpoints").iterdir()
    part = next((tmp_path / "killed" / "data" / "activations").rglob("part-0of1.json"))
    assert json.loads(part.read_text())["rows"] == load_checkpoint(checkpoint).counts["images"] == 12
    with open(part.with_suffix(".f16"), "ab") as f:
        f.write(b"\x00\x7c" * 1000)  # and a torn half-row of garbage (fp16 inf) on top
    run_examples(killed, tiny_rn, "tiny", corpus, ["layer2"], opts)
    reference = open_store(settings_at(tmp_path / "reference"))
    run_examples(reference, tiny_rn, "tiny", corpus, ["layer2"], opts)
    got, want = stored_matrix(killed, "tiny", "layer2"), stored_matrix(reference, "tiny", "layer2")
    assert got.shape == want.shape == (20, tiny_rn.visual.layer2[-1].conv3.out_channels)
    assert np.array_equal(got.hashes, want.hashes) and np.array_equal(got.dense(), want.dense())


def test_an_incomplete_matrix_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "part-0of1.json").write_text(json.dumps({"rows": 0, "units": 3, "complete": False}))
    with pytest.raises(MatrixError, match="incomplete"):
        ActivationMatrix(folder)


def test_a_matrix_shorter_than_its_checkpoint_is_refused_with_the_fix(tmp_path):
    from worker.analyses.activations import PartWriter

    part = PartWriter(tmp_path, "part-0of1", 3, {}).open(0)
    part.append(np.ones((2, 3)), np.arange(2), np.arange(2))
    part.commit()
    part.close()
    with pytest.raises(MatrixError, match="fewer rows than the checkpoint .5.*delete the checkpoint"):
        PartWriter(tmp_path, "part-0of1", 3, {}).open(5)
    assert PartWriter(tmp_path, "part-0of1", 3, {}).open(1).rows == 1  # a longer file is cut back
    assert (tmp_path / "part-0of1.f16").stat().st_size == 1 * 3 * 2
