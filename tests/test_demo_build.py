"""`microscope demo`: the build registers the model and runs the stage list; the command group's shape."""
import subprocess
import sys

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.db import Layer, Model, Unit
from worker.demo import build
from worker.demo import model as demo_model
from worker.demo.corpus import Plan, build_corpus
from worker.demo.items import load_pools

VISION = {"image_size": 32, "width": 8}


RECORD_STAGE = '''
def record(ctx):
    """A stage for the test: notes what it was given in the data folder; skips on later runs."""
    log = ctx.data_dir / "recorded.txt"
    seen = log.is_file()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"{ctx.model_name} {ctx.manifest} {ctx.manifest.is_file()} {ctx.loaded.arch}\\n")
    return {"skipped": "recorded before"} if seen else {}
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny demo-architecture model (random image tower) and a small corpus for it."""
    root = tmp_path_factory.mktemp("tiny")
    demo_model.register("demo-clip-build", VISION, root / "configs")
    weights = demo_model.save_trained(demo_model.create("demo-clip-build"), root / "w.safetensors", {})
    loaded = demo_model.load(root, trained=weights, name="demo-clip-build", vision=VISION,
                             config_dir=root / "configs")
    pools = load_pools(root, 32, n_words=20, npm=False, limit=2)
    plan = Plan(train_words=4, heldout_words=2, emoji=0, photo_crops=1, coloured=2, counts=2, typographic=2,
                scenes=2)
    return loaded, build_corpus(root, 32, plan, npm=False, pools=pools)


def test_build_registers_the_model_and_runs_every_stage(settings, tiny, tmp_path, monkeypatch):
    loaded, corpus = tiny
    (tmp_path / "recording_stage.py").write_text(RECORD_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    lines: list[str] = []
    stages = ["recording_stage:record", "worker.no_such_stage:run"]
    ctx = build.build_demo(settings, stages, loaded=loaded, corpus=corpus, echo=lines.append)
    log = settings.data_dir / "recorded.txt"
    assert log.read_text() == f"demo {corpus / 'manifest.jsonl'} True demo-clip-build\n"
    assert any("worker.no_such_stage:run: not in this checkout, skipped" in line for line in lines)
    with ctx.store.sessions() as s:
        model = s.scalar(select(Model).where(Model.name == "demo"))
        layers = {la.name: la for la in s.scalars(select(Layer).where(Layer.model_id == model.id))}
        assert model.arch == "demo-clip-build" and model.image_size == 32
        assert set(layers) == {"layer1", "layer2", "layer3", "layer4"} and layers["layer4"].is_default
        assert layers["layer4"].n_units == 8 * 32
        n_units = len(s.scalars(select(Unit).where(Unit.layer_id == layers["layer4"].id)).all())
    build.build_demo(settings, stages, loaded=loaded, corpus=corpus, echo=lines.append)  # a second run
    assert any("record: recorded before" in line for line in lines)
    assert len(log.read_text().splitlines()) == 2
    with ctx.store.sessions() as s:
        assert len(s.scalars(select(Unit).where(Unit.layer_id == layers["layer4"].id)).all()) == n_units


def test_a_stage_counts_as_done_only_after_the_stage_it_reads(settings, tiny):
    """The regions stage reads the words stage's scores: done only if it ran after the last words run."""
    from worker.store import recorded_run

    loaded, corpus = tiny
    ctx = build.prepare(settings, loaded=loaded, corpus=corpus)
    assert not build.done_before(ctx, "words")
    with recorded_run(ctx.store, "words", "demo", {}):
        pass
    assert build.done_before(ctx, "words") and not build.done_before(ctx, "regions", after="words")
    with recorded_run(ctx.store, "regions", "demo", {}):
        pass
    assert build.done_before(ctx, "regions", after="words")
    with pytest.raises(RuntimeError), recorded_run(ctx.store, "words", "demo", {}):
        raise RuntimeError("killed")  # a failed words run changes nothing ...
    assert build.done_before(ctx, "regions", after="words")
    with recorded_run(ctx.store, "words", "demo", {}):
        pass
    assert not build.done_before(ctx, "regions", after="words")  # ... a finished one makes regions stale


def test_new_weights_at_the_same_path_start_the_demo_store_over(settings, tiny, tmp_path):
    """A retrained demo model describes other neurons: its old results must not be shown as its own."""
    from dataclasses import replace

    from app.db import Run
    from worker.layers import catalogue
    from worker.store import recorded_run, register_model

    loaded, corpus = tiny
    weights = tmp_path / "demo.safetensors"
    weights.write_bytes(b"first weights")
    ctx = build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    with recorded_run(ctx.store, "words", "demo", {}):
        pass
    with ctx.store.sessions.begin() as s:  # as every stage does: the model re-registered with its plain path
        register_model(s, "demo", loaded.arch, str(weights), loaded.image_size, catalogue(loaded))
    build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    assert build.done_before(ctx, "words")  # same weights: kept
    weights.write_bytes(b"retrained weights")
    build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    assert not build.done_before(ctx, "words")
    with ctx.store.sessions() as s:
        assert s.scalars(select(Run.stage)).all() == [build.WEIGHTS_STAGE]  # only the new weights' record
        model = s.scalar(select(Model).where(Model.name == "demo"))
        assert model.weights == str(weights) and len(model.layers) == 4  # the path the probe loads


def test_a_stage_whose_own_import_fails_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "stage_with_missing_dep.py").write_text("import no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_package_xyz"):
        build.resolve("stage_with_missing_dep:run")
    assert build.resolve("worker.no_such_stage:run") is None
    assert build.resolve("worker.demo.build:words_stage") is build.words_stage


def test_demo_group_has_build_train_evaluate_corpus():
    from app import cli

    cli._add_worker()
    result = CliRunner().invoke(cli.cli, ["demo", "--help"])
    assert result.exit_code == 0
    for command in ("build", "train", "evaluate", "corpus"):
        assert command in result.output
    assert "--no-serve" in result.output


def test_app_cli_imports_without_torch():
    code = "import sys, app.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
