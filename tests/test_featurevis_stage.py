"""The featurevis stage on the real store (SQLite file and Postgres), facet probes, the neuron page, the CLI."""
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import func, select
from typer.testing import CliRunner

from store.schema import FacetProbe, FeatureVis, Run
from store.writes import open_store, register_model
from worker.analyses.facets import ensure_probes, pooled_activations, read_images, train_probe
from worker.analyses.featurevis import FeatureVisSettings, run_layer
from worker.compute.featurevis.render import RenderSettings
from worker.compute.layers import catalogue

CONFIG_DIR = Path(__file__).parent / "model_configs"
WORDS = ["open", "stop", "cafe", "exit", "sale", "hotel", "bank", "taxi", "park", "menu", "news", "love"]


def text_images(folder, n: int, seed: int = 0):
    """Black words on white: a 'text' facet."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=14)
    for i in range(n):
        img = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(img)
        for line in range(3):
            draw.text((rng.randint(0, 16), 4 + line * 20), rng.choice(WORDS), fill="black", font=font)
        img.save(folder / f"t{i}.png")
    return folder


def generic_images(folder, n: int, seed: int = 1):
    """Smooth colour fields: stand-ins for generic photos."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = Image.new("RGB", (4, 4))
        small.putdata([tuple(rng.randint(0, 255) for _ in range(3)) for _ in range(16)])
        small.resize((64, 64), Image.BICUBIC).save(folder / f"g{i}.png")
    return folder


def test_facet_probe_separates_its_images_from_generic_ones(tiny_rn, tmp_path):
    text, _ = read_images(text_images(tmp_path / "text", 20), tiny_rn.preprocess)
    generic, _ = read_images(generic_images(tmp_path / "generic", 20), tiny_rn.preprocess)
    probe = train_probe(pooled_activations(tiny_rn, "layer3", text), pooled_activations(tiny_rn, "layer3", generic))
    assert probe.accuracy > 0.8  # cross-validated, balanced: chance is 0.5
    assert probe.weights.shape == (256,) and (probe.n_facet, probe.n_generic) == (20, 20)
    # the raw-unit weights and bias reproduce the classifier: facet images score above generic ones
    score = lambda x: pooled_activations(tiny_rn, "layer3", x) @ probe.weights + probe.bias  # noqa: E731
    assert (score(text) > 0).mean() > 0.8 and (score(generic) < 0).mean() > 0.8


def test_probe_needs_images_on_both_sides(tiny_rn, tmp_path):
    text, _ = read_images(text_images(tmp_path / "text", 3), tiny_rn.preprocess)
    with pytest.raises(ValueError, match="at least 2 facet and 2 generic"):
        train_probe(pooled_activations(tiny_rn, "layer3", text), pooled_activations(tiny_rn, "layer3", text[:1]))


@pytest.fixture
def tiny_store(store, tiny_rn):
    with store.sessions.begin() as s:
        register_model(s, "tiny", tiny_rn.arch, None, tiny_rn.image_size, catalogue(tiny_rn))
    return store


def test_layer_renders_stores_resumes_and_shows_on_the_page(tiny_store, tiny_rn, tmp_path, client):
    store = tiny_store
    folders = {"text": text_images(tmp_path / "facets" / "text", 8)}
    (folders["text"] / "broken.png").write_bytes(b"not a png")
    probes, report = ensure_probes(store, tiny_rn, "tiny", "layer3", folders,
                                   generic=generic_images(tmp_path / "generic", 8))
    assert report["text"]["trained"] and report["text"]["skipped"] == {"not-image": 1}
    again, report2 = ensure_probes(store, tiny_rn, "tiny", "layer3", folders)  # stored once per model
    assert not report2["text"]["trained"] and again["text"].digest == probes["text"].digest

    settings = FeatureVisSettings(RenderSettings(steps=2), batch=2, diversity=2)
    first = run_layer(store, tiny_rn, "tiny", "layer4", [0, 1, 2], settings, probes)
    assert (first["rendered"], first["skipped"], first["images"]) == (3, 0, 12)
    with store.sessions() as s:
        rows = s.scalars(select(FeatureVis)).all()
        assert sorted({r.kind for r in rows}) == ["diversity-0", "diversity-1", "facet:text", "plain"]
        assert all(store.cache.resolve(r.image) and store.cache.resolve(r.thumb) for r in rows)
        assert {(r.steps, r.size, r.seed) for r in rows} == {(2, 64, 0)}
        assert s.scalar(select(func.count()).select_from(FacetProbe)) == 1

    second = run_layer(store, tiny_rn, "tiny", "layer4", [0, 1, 2, 3], settings, probes)
    assert (second["rendered"], second["skipped"]) == (1, 3)  # only unit 3 is new
    changed = run_layer(store, tiny_rn, "tiny", "layer4", [0], FeatureVisSettings(RenderSettings(steps=3)))
    assert changed["rendered"] == 1 and changed["images"] == 1  # new settings: plain rendered again

    page = client.get("/models/tiny/layer4/1.json").json()["sections"]["featurevis"]
    assert page["plain"]["steps"] == 2 and [f["facet"] for f in page["facets"]] == ["text"]
    assert [d["kind"] for d in page["diversity"]] == ["diversity-0", "diversity-1"]
    assert client.get(page["plain"]["url"]).status_code == 200
    html = client.get("/models/tiny/layer4/1").text
    assert 'alt="text facet feature visualization of tiny/layer4/1"' in html and "Diversity" in html
    assert client.get("/models/tiny/layer4/0.json").json()["sections"]["featurevis"]["plain"]["steps"] == 3
    grid = client.get("/models/tiny/layer4").text
    assert "/cache/images/" in grid  # the layer grid shows the plain thumbnails


def test_bad_units_and_layers_are_clear_errors(tiny_store, tiny_rn):
    with pytest.raises(ValueError, match="units 0..511"):
        run_layer(tiny_store, tiny_rn, "tiny", "layer4", [512], FeatureVisSettings(RenderSettings(steps=1)))
    with pytest.raises(ValueError, match="no layer 'layer9'.*layer1"):
        run_layer(tiny_store, tiny_rn, "tiny", "layer9", [0], FeatureVisSettings(RenderSettings(steps=1)))
    with pytest.raises(ValueError, match="diversity"):
        FeatureVisSettings(diversity=1)


def test_cli_renders_then_skips_what_is_done(sqlite_url, tmp_path, monkeypatch):
    from worker.cli.stages import worker_cli

    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(tmp_path / "data"))
    text_images(tmp_path / "facets" / "text", 4)
    generic_images(tmp_path / "facets" / "photos", 4)
    args = ["featurevis", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--name", "tiny", "--device", "cpu",
            "--units", "0-1", "--steps", "1", "--batch", "2", "--no-progress", "--facets", str(tmp_path / "facets")]
    first = CliRunner().invoke(worker_cli, args)
    assert first.exit_code == 0, first.output
    assert "rendered 2 neurons (6 images), skipped 0" in first.output
    assert "facet text: probe accuracy" in first.output and "facet photos" in first.output
    second = CliRunner().invoke(worker_cli, args[:-2] + ["--facets", "text", "--facets", "photos"])
    assert second.exit_code == 0, second.output
    assert "rendered 0 neurons (0 images), skipped 2 already done" in second.output

    from store.schema import make_engine, make_sessionmaker

    with make_sessionmaker(make_engine(sqlite_url))() as s:
        runs = s.scalars(select(Run).where(Run.stage == "featurevis")).all()
        assert [r.status for r in runs] == ["done", "done"] and runs[0].report["layers"]["layer4"]["rendered"] == 2
    bad = CliRunner().invoke(worker_cli, args[:-2] + ["--units", "5-2"])
    assert bad.exit_code == 2 and "runs backwards" in bad.output
    missing = CliRunner().invoke(worker_cli, args[:-2] + ["--facets", "nosuch"])
    assert missing.exit_code == 2 and "no stored probe for facets ['nosuch']" in missing.output


def test_cli_skips_until_a_setting_changes(settings):
    """`worker featurevis` runs its stage through the pipeline: up to date the second time (a random-init
    model is seeded, so it is the same model), rerun with more --steps (rendered again) and with --force."""
    from tests.test_pipeline import skips_then_reruns

    args = ["featurevis", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--name", "tiny", "--device", "cpu",
            "--units", "0-1", "--steps", "1", "--batch", "2", "--no-progress"]
    first = skips_then_reruns(settings, args, "featurevis", "tiny", lambda: [*args, "--steps", "2"])
    assert "tiny/layer4: rendered 2 neurons (2 images), skipped 0 already done" in first
    with open_store(settings).sessions() as s:
        reports = s.scalars(select(Run.report).where(Run.stage == "featurevis").order_by(Run.id)).all()
    assert [r["layers"]["layer4"]["rendered"] for r in reports] == [2, 2, 0]  # --force: nothing new to render


def test_the_build_stage_renders_the_default_layer_and_the_corpus_facets(sqlite_url, tmp_path, tiny_vit):
    from store.settings import Settings
    from store.writes import open_store
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import run_pipeline

    corpus = tmp_path / "corpus"
    text_images(corpus / "text", 4)
    generic_images(corpus / "photos", 4)
    store = open_store(Settings(database_url=sqlite_url, data_dir=tmp_path / "data"))
    options = {"featurevis": {"steps": 1, "batch": 128, "facets": ("faces", "text"), "facet_units": 2}}
    ctx = BuildContext(store, tiny_vit, "demo", corpus, options=options, progress=False)
    (got,) = run_pipeline(ctx, only=["featurevis"], echo=lambda _: None)
    assert got.status == "done" and got.units == 256
    with store.sessions() as s:
        report = s.scalar(select(Run.report).where(Run.stage == "featurevis"))
    assert report["layers"]["resblocks.1.mlp"]["rendered"] == 256 and report["facets"]["probes"]["photos"]["trained"]
    assert report["facets"]["images"] == 2  # text only: photos is a probe's contrast, not a rendered facet
    (again,) = run_pipeline(ctx, only=["featurevis"], echo=lambda _: None)
    assert (again.status, again.reason) == ("skipped", "up to date")  # what the demo build runs, a second time
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1  # ... and it records no new run
        kinds = s.execute(select(FeatureVis.kind, func.count()).group_by(FeatureVis.kind).order_by(FeatureVis.kind))
        assert kinds.all() == [("facet:text", 2), ("plain", 256)]
