"""Build the demo store: get the embedded model, build the probe corpus, register the model as "demo", then
run every worker stage in `STAGES` on it.

A stage is `"module:function"`; the function takes a `DemoContext` and returns a short report (or None).
It must skip work already done, so that a second `microscope demo` reaches a served page within a minute.
To add a stage, append one line to `STAGES`. Stages whose module is not there yet are skipped with a note.
"""
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from app.db import Model, Run
from app.settings import Settings

DEMO_MODEL = "demo"
WEIGHTS_STAGE = "demo-weights"  # a run that records the digest of the weights the store was built with
DESCRIPTION = ("The embedded default: a small CLIP this project trains on registry data (a ModifiedResNet "
               "image tower, 64 px, learned against the frozen pretrained MiniLM text tower).")


@dataclass
class DemoContext:
    settings: Settings
    store: object  # worker.store.Store
    loaded: object  # worker.models.LoadedModel
    model_name: str
    corpus: Path  # the probe corpus folder; each top-level folder is a facet
    manifest: Path  # corpus/manifest.jsonl: path, caption, kind, facet, concept, source, licence, split

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)


def words_stage(ctx: DemoContext) -> dict:
    from worker.words import run_words

    return run_words(ctx.store, ctx.loaded, ctx.model_name)


def examples_stage(ctx: DemoContext) -> dict:
    from worker.examples import run_examples

    if done_before(ctx, "examples"):
        return {"skipped": "done before"}
    return run_examples(ctx.store, ctx.loaded, ctx.model_name, ctx.manifest)


def done_before(ctx: DemoContext, stage: str, after: str | None = None) -> bool:
    """Whether a run of `stage` on this model finished (for stages that do not check this themselves);
    with `after`, only a run that finished after the last finished run of that stage counts."""
    return last_done(ctx, stage) > (last_done(ctx, after) if after else 0)


def last_done(ctx: DemoContext, stage: str) -> int:
    """The id of the last finished run of `stage` on this model (0 if none)."""
    with ctx.store.sessions() as session:
        return session.scalar(
            select(func.max(Run.id)).join(Model, Run.model_id == Model.id)
            .where(Model.name == ctx.model_name, Run.stage == stage, Run.status == "done")
        ) or 0


# the order matters only where a stage reads another's results
STAGES: list[str] = [
    "worker.demo.build:examples_stage",
    "worker.featurevis.demo:demo_stage",  # plain feature visualizations of layer4; faceted ones for a few units
    "worker.demo.build:words_stage",
    "worker.maps:demo_stage",  # world map heat overlays, country and city name scores, choropleths
    "worker.regions:demo_stage",  # share of geographic top-5 words (reads the words stage's scores)
    "worker.attribution:demo_stage",  # text → neuron read-out for /probe and /search
    "worker.demo.text_stages:emotions_stage",
    "worker.demo.text_stages:typographic_stage",
    "worker.demo.text_stages:stroop_stage",
    "worker.modality:demo_stage",  # modality profiles of layer4 over the corpus's caption concepts (reads the matrix)
    "worker.selflabels:demo_stage",  # caption-free labels by the model's own text tower, with held-out AUC
]


def resolve(target: str) -> Callable[[DemoContext], dict | None] | None:
    """The stage function, or None when its module is not in this checkout."""
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return None
        raise


def prepare(settings: Settings, device: str = "cpu", loaded=None, corpus: Path | None = None) -> DemoContext:
    """The model (assembled and loaded), the corpus (built once) and the store with the model registered.
    `loaded` and `corpus` replace the embedded model and its corpus (tests use a tiny pair)."""
    from worker.demo import model as demo_model
    from worker.demo.corpus import MANIFEST, build_corpus
    from worker.layers import catalogue
    from worker.store import finish_run, open_store, register_model, start_run

    data_dir = Path(settings.data_dir)
    loaded = loaded or demo_model.load(data_dir, device)
    corpus = corpus or build_corpus(data_dir, loaded.image_size)
    store = open_store(settings)
    digest = weights_digest(loaded.weights)
    with store.sessions.begin() as session:
        kept = forget_other_weights(session, digest)
        model = register_model(session, DEMO_MODEL, arch=loaded.arch, weights=loaded.weights,
                               image_size=loaded.image_size, layers=catalogue(loaded), description=DESCRIPTION,
                               load=loaded.record())
        if not kept:
            finish_run(session, start_run(session, WEIGHTS_STAGE, model, {"sha256": digest}), {})
    return DemoContext(settings, store, loaded, DEMO_MODEL, corpus, corpus / MANIFEST)


def weights_digest(weights) -> str:
    """What tells the demo's weights apart: the file's digest (a retrained model at the same path differs).
    Recorded as a run of its own: Model.weights stays the path, which the stages and the live probe load."""
    from worker.demo.model import file_digest

    path = Path(str(weights)) if weights else None
    return file_digest(path) if path and path.is_file() else str(weights)


def weights_seen(session, model_id: int) -> str | None:
    settings = session.scalar(select(Run.settings).where(Run.model_id == model_id, Run.stage == WEIGHTS_STAGE)
                              .order_by(Run.id.desc()).limit(1))
    return (settings or {}).get("sha256")


def forget_other_weights(session, digest: str) -> bool:
    """Results of the demo model with other weights describe other neurons: delete them (the database
    cascades to its layers, units, runs and everything computed for them) so every stage runs again.
    True when the store already holds these weights' results."""
    old = session.scalar(select(Model).where(Model.name == DEMO_MODEL))
    if old is not None and weights_seen(session, old.id) == digest:
        return True
    if old is not None:
        session.delete(old)
        session.flush()
    return False


def build_demo(settings: Settings, stages: list[str] | None = None, device: str = "cpu",
               echo: Callable[[str], None] = print, loaded=None, corpus: Path | None = None) -> DemoContext:
    """Build (or bring up to date) the demo store; returns the context the stages ran with."""
    t0 = time.perf_counter()
    ctx = prepare(settings, device, loaded, corpus)
    echo(f"demo model ready: {ctx.loaded.arch}, corpus {ctx.corpus} ({time.perf_counter() - t0:.0f} s)")
    for target in STAGES if stages is None else stages:
        fn = resolve(target)
        if fn is None:
            echo(f"stage {target}: not in this checkout, skipped")
            continue
        t = time.perf_counter()
        report = fn(ctx) or {}
        summary = report.get("skipped") or "done"
        echo(f"stage {target}: {summary} ({time.perf_counter() - t:.0f} s)")
    echo(f"demo store built in {time.perf_counter() - t0:.0f} s")
    return ctx
