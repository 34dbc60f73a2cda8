"""Multimodality scores on planted units (pure compute), then the stage end to end on a real tiny model."""
from pathlib import Path

import numpy as np
import pytest

from worker.analyses.modality import (
    groups_from_captions,
    groups_from_folders,
    multimodality,
    null_scores,
    picture_means,
    summary,
)


def planted(concepts: int = 40, units: int = 200, seed: int = 0):
    """Noise in both modalities; unit 0 answers concept 7 as picture and word, unit 1 only its word
    (spelling), unit 2 is dead."""
    rng = np.random.default_rng(seed)
    picture, word = rng.normal(size=(concepts, units)), rng.normal(size=(concepts, units))
    picture[7, 0] += 8
    word[7, 0] += 8
    word[7, 1] += 8
    picture[:, 2] = word[:, 2] = 0.0
    return picture, word


def test_a_planted_multimodal_unit_scores_high_a_spelling_unit_low_a_dead_unit_at_the_null():
    picture, word = planted()
    score, best, peak = multimodality(picture, word)
    null = null_scores(picture, word)
    figures = summary(score, null)
    assert best[0] == 7 and score[0] > figures["p99"] + 0.15 and peak[0] > 4
    assert score[1] < figures["p99"]  # the word alone is not enough
    assert score[2] == peak[2] == 0.0 and (null.reshape(-1, 200)[:, 2] == 0).all()  # dead: 0 under every permutation
    assert figures["above"] <= 1 + 0.02 * 200 and sum(figures["counts"]) == 200


def test_the_null_holds_about_one_percent_of_noise_units_above_its_99th_percentile():
    rng = np.random.default_rng(1)
    picture, word = rng.normal(size=(30, 2000)), rng.normal(size=(30, 2000))
    figures = summary(multimodality(picture, word)[0], null_scores(picture, word))
    assert 0 < figures["above"] < 60  # 1 % of 2,000 = 20 expected


def test_concept_groups_from_captions_and_folders():
    captions = ["a dog on grass", "my dog", "Dogs and a dog", "a cat", "cat", "the cat sat", "a photo"]
    groups = groups_from_captions(captions, min_images=2)
    assert list(groups) == ["cat", "dog"] and groups["dog"].tolist() == [0, 1, 2]
    assert groups_from_captions(captions, vocabulary={"cat"}, min_images=2).keys() == {"cat"}
    sources = ["n01/golden_retriever/a.jpg", "n01/golden_retriever/b.jpg", "tabby/c.jpg", "tabby/d.jpg", "e.jpg"]
    assert {k: v.tolist() for k, v in groups_from_folders(sources, min_images=2).items()} == \
        {"golden retriever": [0, 1], "tabby": [2, 3]}
    assert groups_from_folders(["a/x.jpg", "a/y.jpg"], min_images=1) == {}  # one folder is no class set


class Dense:
    """The reading interface of an activation matrix, over an array (blocks of 3 rows)."""

    def __init__(self, a):
        self.a, self.rows, self.units = a, a.shape[0], a.shape[1]

    def blocks(self):
        for i in range(0, self.rows, 3):
            yield i, self.a[i:i + 3]


def test_picture_means_scan_the_matrix_in_blocks():
    a = np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32)
    groups = {"x": np.array([0, 4, 9]), "y": np.array([1, 2])}
    got = picture_means(Dense(a), groups)
    assert np.allclose(got, [a[[0, 4, 9]].mean(0), a[[1, 2]].mean(0)], atol=1e-6)


@pytest.fixture
def word_corpus(tmp_path):
    """Pictures that are the words themselves: each concept's images are its name, drawn in other fonts and
    sizes than the word probe uses, so a unit that reads a word answers its pictures too (multimodal by
    construction on any model); captions name the concept."""
    from worker.compute.render_text import RenderPlan, render_all

    names = ["dog", "cat", "sun", "car", "tree", "fish", "bird", "moon", "boat", "house", "apple", "chair"]
    root = tmp_path / "corpus"
    root.mkdir()
    plan = RenderPlan(canvas=64, scales=(0.3, 0.45), positions=((0.3, 0.3), (0.5, 0.5), (0.7, 0.6)))
    from PIL import Image

    pixels = render_all(names, plan)
    for c, name in enumerate(names):
        for v in range(pixels.shape[1]):
            Image.fromarray(pixels[c, v]).save(root / f"{name}-{v}.png")
            (root / f"{name}-{v}.txt").write_text(f"a picture of the {name}")
    return root, names


def test_the_stage_finds_words_drawn_as_pictures_multimodal_and_shuffled_captions_not(
        store, probe_model, word_corpus, tmp_path, client):
    import shutil

    from tests.conftest import stage_report
    from worker.analyses.examples import ExampleOptions, run_examples

    root, names = word_corpus
    run_examples(store, probe_model, "tiny", root, ["layer4"], ExampleOptions(k=4, workers=0, progress=False,
                                                                              samples=0))
    report = stage_report(store, probe_model, "modality", concept_set="captions", permutations=10)
    assert report["concepts"] == len(names) and report["units"] == 512
    assert report["above"] > 0.2 * 512  # far above the 1 % the null lets through
    shuffled = tmp_path / "shuffled"
    shutil.copytree(root, shuffled)
    rng = np.random.default_rng(0)
    for txt in sorted(shuffled.glob("*.txt")):
        txt.write_text(f"a picture of the {names[rng.integers(len(names))]}")
    run_examples(store, probe_model, "tiny", shuffled, ["layer4"], ExampleOptions(k=4, workers=0, progress=False,
                                                                                  samples=0))
    control = stage_report(store, probe_model, "modality", concept_set="captions", permutations=10)
    assert control["above"] < 0.05 * 512

    page = client.get("/models/tiny/layer4/0.json").json()["sections"]["modality"]
    assert {c["name"] for c in page["columns"]} == {"picture", "word", "readout"} and page["rows"]
    grid = client.get("/models/tiny/layer4.json", params={"sort": "multimodal"}).json()
    scores = [u["multimodality"] for u in grid["units"]]
    assert scores == sorted(scores, reverse=True)
    summary_page = client.get("/models/tiny/layer4/modality.json").json()
    assert summary_page["summary"]["above"] == control["above"] and sum(summary_page["summary"]["counts"]) == 512
    assert "Modality profile" in client.get("/models/tiny/layer4/0").text
    html = client.get("/models/tiny/layer4/modality").text
    assert "above the null's 99th percentile" in html and "<svg" in html
    assert "most multimodal first" in client.get("/models/tiny/layer4").text
    assert client.get("/models/tiny/nope/modality").status_code == 404
    assert client.get("/models/tiny/layer1/modality").status_code == 404  # no profile there: says which command
    assert client.get("/models/tiny/layer4", params={"sort": "bogus"}).status_code == 422


def test_demo_evaluate_counts_with_the_same_score(probe_model, word_corpus):
    from worker.demo.evaluate import modality_criterion, unit_activations

    root, names = word_corpus
    files = sorted(str(p) for p in root.glob("*.png"))
    rows = [{"caption": Path(f).stem.split("-")[0]} for f in files]
    acts = unit_activations(probe_model, files, "layer4")
    real = modality_criterion(probe_model, acts, rows, "layer4")
    assert real["concepts"] == len(names) and real["above"] > 0.2 * 512
    rng = np.random.default_rng(0)
    shuffled = [{"caption": names[rng.integers(len(names))]} for _ in rows]
    assert modality_criterion(probe_model, acts, shuffled, "layer4")["above"] < 0.05 * 512


def test_the_stage_reads_the_matrix_a_ranged_examples_build_leaves(store, probe_model, word_corpus):
    """The examples stage of `microscope build` (listing ranges, one matrix part per range: what --ray runs)
    registers a complete matrix, and modality finds the same multimodal units from it."""
    from tests.conftest import stage_report
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import run_pipeline
    from worker.stages.examples import Examples

    root, names = word_corpus
    options = {"examples": {"k": 4, "samples": 0, "workers": 0, "range_entries": 8}}
    ctx = BuildContext(store, probe_model, "tiny", root, ("layer4",), options, (), progress=False)
    outcomes = run_pipeline(ctx, stages=[Examples()], echo=lambda _: None)
    assert [o.status for o in outcomes] == ["done"]
    report = stage_report(store, probe_model, "modality", concept_set="captions", permutations=10)
    assert report["concepts"] == len(names) and report["units"] == 512
    assert report["above"] > 0.2 * 512


def test_the_stage_computes_in_compute_and_only_stores_in_write(store, probe_model, word_corpus, monkeypatch):
    """Stage contract: compute returns the profile and scores and writes nothing; write stores them; the
    matrix is scanned in blocks, never loaded whole."""
    from app.activations import ActivationMatrix
    from store.writes import recorded_run
    from worker.analyses.artifacts import artifact
    from worker.analyses.examples import ExampleOptions, run_examples
    from worker.pipeline.contract import BuildContext
    from worker.stages.modality import Modality

    root, names = word_corpus
    run_examples(store, probe_model, "tiny", root, ["layer4"], ExampleOptions(k=4, workers=0, progress=False,
                                                                              samples=0))
    monkeypatch.setattr(ActivationMatrix, "dense", lambda self: pytest.fail("the stage loaded the whole matrix"))
    ctx = BuildContext(store, probe_model, "tiny", root, ("layer4",), {"modality": {"concept_set": "captions"}}, (),
                       progress=False)
    stage = Modality()
    parts = [stage.compute(ctx, item) for item in stage.items(ctx)]
    assert artifact(store, "tiny", "layer4", "modality") is None
    assert parts[0]["scored"]["score"].shape == (512,) and len(parts[0]["profile"].concepts) == len(names)
    with recorded_run(store, "modality", "tiny", {}) as run:
        report = stage.write(ctx, stage.merge(ctx, parts), run["run_id"])
    stored = artifact(store, "tiny", "layer4", "modality")
    assert report["units"] == 512 and stored.meta["summary"]["above"] == report["layers"]["layer4"]["above"]
    assert report["layers"]["layer4"]["above"] > 0.2 * 512
    pngs = sorted(p.name for p in root.glob("*.png"))  # captions given beside the listing (the demo's manifest)
    given = {name: ("alpha" if i % 2 else "beta") for i, name in enumerate(pngs)}
    ctx.options["modality"]["captions"] = given
    assert stage.compute(ctx, stage.items(ctx)[0])["profile"].concepts == ["alpha", "beta"]
