"""`microscope demo`: the build registers the model and runs the stage list; the command group's shape."""
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from store.schema import Layer, Model, Unit
from worker.demo import build
from worker.demo import model as demo_model
from worker.demo.corpus import Plan, build_corpus
from worker.demo.items import load_pools
from worker.pipeline.contract import Stage
from worker.pipeline.runner import UnknownStage

VISION = {"image_size": 32, "width": 8}


class Record(Stage):
    """A stage for the test: notes what it was given in the data folder."""

    name = "record"

    def compute(self, ctx, item):
        return f"{ctx.model_name} {ctx.corpus / 'manifest.jsonl'} {(ctx.corpus / 'manifest.jsonl').is_file()} " \
               f"{ctx.loaded.arch}\n"

    def write(self, ctx, merged, run_id):
        with open(ctx.data_dir / "recorded.txt", "a") as f:
            f.write(merged)
        return {"units": 0}


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


def test_build_registers_the_model_and_runs_every_stage(settings, tiny, tmp_path):
    loaded, corpus = tiny
    lines: list[str] = []
    ctx, outcomes = build.build_demo(settings, loaded=loaded, corpus=corpus, echo=lines.append, stages=[Record()],
                                     progress=False)
    log = settings.data_dir / "recorded.txt"
    assert log.read_text() == f"demo {corpus / 'manifest.jsonl'} True demo-clip-build\n"
    assert [(o.stage, o.status) for o in outcomes] == [("record", "done")]
    with ctx.store.sessions() as s:
        model = s.scalar(select(Model).where(Model.name == "demo"))
        layers = {la.name: la for la in s.scalars(select(Layer).where(Layer.model_id == model.id))}
        assert model.arch == "demo-clip-build" and model.image_size == 32
        assert set(layers) == {"layer1", "layer2", "layer3", "layer4"} and layers["layer4"].is_default
        assert layers["layer4"].n_units == 8 * 32
        n_units = len(s.scalars(select(Unit).where(Unit.layer_id == layers["layer4"].id)).all())
    _, again = build.build_demo(settings, loaded=loaded, corpus=corpus, echo=lines.append, stages=[Record()],
                                progress=False)  # a second run
    assert [(o.status, o.reason) for o in again] == [("skipped", "up to date")]
    table = "\n".join(lines).splitlines()
    assert any(line.split()[:2] == ["record", "0"] and "skipped: up to date" in line for line in table)
    assert len(log.read_text().splitlines()) == 1
    with ctx.store.sessions() as s:
        assert len(s.scalars(select(Unit).where(Unit.layer_id == layers["layer4"].id)).all()) == n_units


def test_the_demo_attacks_the_probe_corpus_photos(settings, tiny):
    """The demo's typographic options: its photos labelled by concept, attack texts picked from the labels."""
    from worker.analyses.typographic import labelled_images
    from worker.stages.typographic import Typographic

    loaded, corpus = tiny
    ctx = build.prepare(settings, loaded=loaded, corpus=corpus)
    images = ctx.option("typographic", "images")
    labels = [y for _, y in labelled_images(images)]
    assert labels and all(y == y.lower() and not y.startswith(("a ", "an ", "the ")) for y in labels)
    assert set(ctx.option("typographic", "attacks")) <= set(labels)
    assert Typographic().applies(ctx) is None
    assert ctx.option("featurevis", "steps") == build.FEATUREVIS["steps"]


def done_runs(ctx, stage: str) -> list:
    from store.schema import Run

    with ctx.store.sessions() as s:
        return s.scalars(select(Run).join(Model, Run.model_id == Model.id)
                         .where(Model.name == "demo", Run.stage == stage, Run.status == "done")).all()


def test_new_weights_at_the_same_path_start_the_demo_store_over(settings, tiny, tmp_path):
    """A retrained demo model describes other neurons: its old results must not be shown as its own."""
    from dataclasses import replace

    from store.schema import Run
    from store.writes import recorded_run, register_model
    from worker.compute.layers import catalogue

    loaded, corpus = tiny
    weights = tmp_path / "demo.safetensors"
    weights.write_bytes(b"first weights")
    ctx = build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    with recorded_run(ctx.store, "words", "demo", {}):
        pass
    with ctx.store.sessions.begin() as s:  # as every stage does: the model re-registered with its plain path
        register_model(s, "demo", loaded.arch, str(weights), loaded.image_size, catalogue(loaded))
    build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    assert done_runs(ctx, "words")  # same weights: kept
    weights.write_bytes(b"retrained weights")
    build.prepare(settings, loaded=replace(loaded, weights=str(weights)), corpus=corpus)
    assert not done_runs(ctx, "words")
    with ctx.store.sessions() as s:
        assert s.scalars(select(Run.stage)).all() == [build.WEIGHTS_STAGE]  # only the new weights' record
        model = s.scalar(select(Model).where(Model.name == "demo"))
        assert model.weights == str(weights) and len(model.layers) == 4  # the path the probe loads


def test_a_mistyped_stage_is_an_error_before_anything_is_built(settings):
    with pytest.raises(UnknownStage, match="no stage 'wrods'; stages: examples, featurevis, words"):
        build.build_demo(settings, only=["wrods"], loaded=object(), corpus=Path("nowhere"))


def test_demo_group_has_build_train_evaluate_corpus():
    from worker.cli.root import cli

    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    for command in ("build", "train", "evaluate", "corpus"):
        assert command in result.output
    assert "--no-serve" in result.output


def test_app_cli_imports_without_torch():
    code = "import sys, worker.cli.root; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
