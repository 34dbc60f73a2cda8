"""Build the demo store: the pipeline (`worker.pipeline.runner`) on the embedded model and the probe corpus.

`prepare` gets the embedded model, builds the probe corpus, registers the model as "demo" (dropping results
of other weights) and sets the demo's stage options; `build_demo` runs every stage on it. A second
`microscope demo` skips every stage (their fingerprints are unchanged) and reaches a served page in a minute.
"""
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import select

from store.schema import Model, Run
from store.settings import Settings
from worker.pipeline.contract import BuildContext
from worker.pipeline.runner import Outcome, run_pipeline, select_stages, summary

DEMO_MODEL = "demo"
WEIGHTS_STAGE = "demo-weights"  # a run that records the digest of the weights the store was built with
DESCRIPTION = ("The embedded default: a small CLIP this project trains on registry data (a ModifiedResNet "
               "image tower, 64 px, learned against the frozen pretrained MiniLM text tower).")
# small enough for the demo model's penultimate layer on 2 CPU cores in a few minutes: plain images for every
# unit, facet images for the first 16 (rendering is the cost; the probes are cheap)
FEATUREVIS = {"steps": 32, "batch": 32, "facets": ("faces", "text", "logos", "flags"), "facet_units": 16}


def prepare(settings: Settings, device: str = "cpu", loaded=None, corpus: Path | None = None) -> BuildContext:
    """The model (assembled and loaded), the corpus (built once) and the store with the model registered.
    `loaded` and `corpus` replace the embedded model and its corpus (tests use a tiny pair)."""
    from store.writes import finish_run, open_store, register_model, start_run
    from worker.compute.layers import catalogue
    from worker.demo import model as demo_model
    from worker.demo.corpus import build_corpus

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
    return BuildContext(store, loaded, DEMO_MODEL, Path(corpus), options=demo_options(data_dir, Path(corpus)))


def demo_options(data_dir: Path, corpus: Path) -> dict:
    """The demo's stage options: small feature visualizations, attacks on the probe corpus's photos."""
    from worker.analyses.typographic import labelled_images
    from worker.demo.text_stages import attack_set, pick_attacks

    images = attack_set(data_dir, corpus)
    labels = list(dict.fromkeys(label for _, label in labelled_images(images)))
    return {"featurevis": FEATUREVIS, "typographic": {"images": images, "attacks": pick_attacks(labels)},
            "modality": {"concept_set": "captions", "exclude": demo_non_text(corpus),
                         "captions": demo_captions(corpus)}}


def demo_captions(corpus: Path) -> dict[str, str]:
    """{image path: caption} from the probe corpus's manifest: the folder listing has no captions of its own."""
    from worker.demo.corpus import read_manifest

    return {r["path"]: r["caption"] for r in read_manifest(corpus)}


def demo_non_text(corpus: Path) -> frozenset[str]:
    """The corpus's rendered words and logos: left out of the modality stage's pictures (as `demo evaluate`
    leaves them out), since as pictures they would make every reading unit look multimodal."""
    from worker.demo.corpus import read_manifest
    from worker.demo.evaluate import NON_TEXT_EXCLUDED

    return frozenset(r["path"] for r in read_manifest(corpus) if r["kind"] in NON_TEXT_EXCLUDED)


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


def build_demo(settings: Settings, only: Sequence[str] = (), skip: Sequence[str] = (), device: str = "cpu",
               echo: Callable[[str], None] = print, loaded=None, corpus: Path | None = None,
               stages=None, progress: bool = True) -> tuple[BuildContext, list[Outcome]]:
    """Build (or bring up to date) the demo store; returns the context and each stage's outcome."""
    from worker.stages import STAGES

    select_stages(STAGES if stages is None else stages, only, skip)  # a mistyped name fails before any work
    t0 = time.perf_counter()
    ctx = prepare(settings, device, loaded, corpus)
    ctx.progress = progress
    echo(f"demo model ready: {ctx.loaded.arch}, corpus {ctx.corpus} ({time.perf_counter() - t0:.0f} s)")
    outcomes = run_pipeline(ctx, stages, only, skip, echo=echo)
    echo(summary(outcomes))
    echo(f"demo store built in {time.perf_counter() - t0:.0f} s")
    return ctx, outcomes
