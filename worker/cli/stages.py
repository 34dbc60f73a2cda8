"""`microscope build` and `microscope worker …`: the pipeline and its stages one by one. Each command imports
torch only when it runs. Commands are plain functions; `WORKER_COMMANDS` (pipeline order) registers them."""
import typer

from worker.cli.concepts import directions_cmd, modality_cmd, selflabels_cmd
from worker.cli.featurevis import featurevis_cmd
from worker.cli.options import Device, Force, ModelName, ModelSource, Precision, command_group, model_options, run_stage
from worker.cli.words import maps_cmd, regions_cmd, words_cmd


# -- the text side: emotion composition, typographic attacks, Stroop (worker/analyses/: emotions, typographic, stroop)
@model_options
def emotions_cmd(source: ModelSource, name: ModelName = None, device: Device = "auto",
                 feelings: str = typer.Option("", help="feeling-wheel file (default: worker/data/wordlists/"
                                                       "feelings.txt)"),
                 method: str = typer.Option("lasso", help="sparse code: lasso | logistic (the paper's footnote 41)"),
                 neurons: int = typer.Option(6, min=1, help="at most this many neurons per word"),
                 factors: int = typer.Option(7, min=2, help="NMF factors colouring the atlas"), force: bool = Force):
    """Emotion composition: "I feel {word}" attribution vectors, sparse codes per word, an NMF atlas."""
    from pathlib import Path

    from worker.data.feelings import FEELINGS

    options = {"feelings_path": Path(feelings or FEELINGS), "method": method, "neurons": neurons,
               "factors": factors}
    model_name, report = run_stage("emotions", source, name, device, options, force)
    typer.echo(f"{model_name}: {report['words']} words, mean {report['quality_name']} "
               f"{report['mean_quality']:.3f}; data at {report['path']}")


@model_options
def typographic_cmd(source: ModelSource,
                    images: str = typer.Option(..., help="folder of class folders, or a .csv/.jsonl manifest "
                                                         "with path and label columns"),
                    name: ModelName = None, device: Device = "auto",
                    attack: list[str] = typer.Option([], help="TEXT or TEXT=CLASS (repeatable). Default: every "
                                                              "label of the image set attacks as itself"),
                    extra_label: list[str] = typer.Option([], help="another class for the zero-shot label set"),
                    template: str = typer.Option("a photo of a {}", help="zero-shot prompt with one {}"),
                    label_key: str = typer.Option("label", help="a manifest's label column"), force: bool = Force):
    """Typographic attack lab: attack text at 8 fixed positions; success rate and pixel cover."""
    from worker.analyses.typographic import Attack
    from worker.cli.options import clean_errors, fail

    if template.count("{}") != 1:
        fail(f"--template must hold exactly one {{}}, got {template!r}")
    with clean_errors(ValueError):
        attacks = [Attack.parse(a) for a in attack]
    options = {"images": images, "attacks": attacks, "extra_labels": extra_label, "template": template,
               "label_key": label_key}
    model_name, report = run_stage("typographic", source, name, device, options, force)
    skipped = ", ".join(f"{n} {r}" for r, n in report["skipped"].items()) or "none"
    typer.echo(f"{model_name}: {report['n_images']} images (skipped: {skipped}), "
               f"clean accuracy {report['clean_accuracy']:.3f}")
    for a in report["attacks"]:
        rate = "n/a" if a["success_rate"] is None else f"{a['success_rate']:.1%}"
        typer.echo(f"  {a['text']!r} -> {a['target']}: success {rate} of {a['eligible']}, "
                   f"pixel cover {a['pixel_cover']:.2%}")


@model_options
def stroop_cmd(source: ModelSource, name: ModelName = None, device: Device = "auto", force: bool = Force):
    """Stroop test: colour words drawn in colours, zero-shot ink colour, congruent vs incongruent accuracy."""
    model_name, report = run_stage("stroop", source, name, device, {}, force)
    s = report["scores"]
    typer.echo(f"{model_name}: congruent accuracy {s['congruent_accuracy']:.3f} ({s['congruent']}), incongruent "
               f"{s['incongruent_accuracy']:.3f} ({s['incongruent']}), read the word {s['read_word_rate']:.3f}")


# -- model frame and dataset examples (shared model options: worker/cli/options.py) ---------------------
@model_options
def layers_cmd(source: ModelSource, device: Device = "cpu"):
    """List the model's neuron layers with their unit counts (the default layer is marked *), what a neuron
    is in its tower family and which value of it the examples, probes and feature vis show."""
    from worker.cli.options import open_model
    from worker.compute.layers import catalogue, family_of, signal_description
    from worker.compute.towers import tower_name

    loaded = open_model(source, device)
    specs, family = catalogue(loaded), family_of(loaded)
    width = max(len(s.name) for s in specs)
    s = loaded.settings
    typer.echo(f"{loaded.arch} ({loaded.image_size} px), family {family.name} ({tower_name(loaded.visual)})")
    typer.echo(f"  neuron: {family.neuron}")
    typer.echo(f"  value shown: {signal_description(loaded)}")
    typer.echo(f"  preprocessing: QuickGELU {'on' if s.quick_gelu else 'off'}, mean "
               f"{', '.join(f'{v:g}' for v in s.mean)}, std {', '.join(f'{v:g}' for v in s.std)}, "
               f"{s.interpolation}, {s.resize_mode}")
    for s in specs:
        typer.echo(f"{'*' if s.is_default else ' '} {s.name:<{width}}  {s.n_units:>6} units  {s.kind:<4}  {s.module}")


@model_options
def register_cmd(source: ModelSource, name: ModelName = None,
                 description: str = typer.Option("", help="shown on the model's page")):
    """Register a model, its layers and unit rows in the store (no compute)."""
    from store.settings import Settings
    from store.writes import open_store, register_model
    from worker.cli.options import model_name_for, open_model
    from worker.compute.layers import catalogue

    loaded = open_model(source, "cpu")
    model_name = name or model_name_for(source.arch, source.weights)
    store = open_store(Settings())
    with store.sessions.begin() as session:
        model = register_model(session, model_name, loaded.arch, source.weights, loaded.image_size,
                               catalogue(loaded), description, load=loaded.record())
        typer.echo(f"registered {model.name} ({loaded.arch}, weights {source.weights or 'random'}): "
                   f"{len(model.layers)} layers, {sum(la.n_units for la in model.layers)} units")


Ray = typer.Option(None, "--ray", help="run the image- and unit-heavy stages on a Ray cluster: auto (the "
                   "cluster this machine runs, else a new one over its GPUs) or its ADDRESS (docs/scale.md)")
JpegDecode = typer.Option("auto", "--jpeg-decode", help="workers (PIL in the loader processes) | device "
                          "(torchvision/nvJPEG on the model's device) | auto (device where the images are "
                          "computed on CUDA); other formats always decode in the workers")


@model_options
def examples_cmd(
    source: ModelSource,
    corpus: str = typer.Option(..., help="image folder (recursive; .tar shards inside are read too), a .tar "
                                         "shard, or a .csv/.jsonl manifest with path[,caption]"),
    name: ModelName = None, device: Device = "auto",
    layer: list[str] = typer.Option([], help="layer name (repeatable; default: the penultimate layer)"),
    k: int = typer.Option(64, min=1, help="examples kept per unit and sign"),
    reduce: str = typer.Option("mean", help="spatial reduction: mean | max (the bottom then uses min)"),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(None, min=0, help="DataLoader processes decoding images [default: 1 on a CPU, "
                                                   "all cores but one with CUDA]"),
    range_entries: int = typer.Option(None, min=1, help="entries per listing range, the unit of work and of "
                                                         "resuming [default: 4096, more past 64 ranges]"),
    samples: int = typer.Option(256, min=0, help="activation samples kept per unit (for studies)"),
    precision: Precision = "auto",
    jpeg_decode: str = JpegDecode,
    ray: str = Ray,
    force: bool = Force,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    shard: str = typer.Option(None, hidden=True),
):
    """Top-K and most-negative-K dataset examples with heatmaps, activation statistics and samples: the
    examples stage of `microscope build` (skipped while up to date; a killed run resumes by listing range)."""
    from pathlib import Path

    from worker.analyses.examples import REDUCTIONS
    from worker.cli.options import fail

    if shard is not None:
        fail("--shard is retired: use every GPU with --ray auto|ADDRESS (or microscope build --ray; docs/scale.md)")
    if reduce not in REDUCTIONS:
        fail(f"--reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if not Path(corpus).expanduser().exists():
        fail(f"--corpus {corpus}: no such file or folder")
    executor = ray_executor(ray)
    given = {"k": k, "reduce": reduce, "batch_size": batch_size, "samples": samples, "workers": workers,
             "range_entries": range_entries}

    def options(loaded) -> dict:
        return {key: v for key, v in given.items() if v is not None} | {
            "jpeg_decode": jpeg_mode(jpeg_decode, loaded, executor)}

    model_name, report = run_stage("examples", source, name, driver_device(ray, device), options, force, layer,
                                   precision, Path(corpus).expanduser(), executor, progress)
    skipped = ", ".join(f"{n} {r}" for r, n in report["skipped"].items()) or "none"
    typer.echo(f"{model_name}: {report['images']} images ({report['duplicates']} duplicates, skipped: {skipped}) "
               f"in {report['ranges']} ranges, {report['timing']['compute_seconds']:.1f} s of compute "
               f"at {report['precision']}")
    for layer_name, n in report["non_finite"].items():
        typer.echo(f"{layer_name}: {n} non-finite activations (overflow?) left out of their units' examples "
                   "and statistics; --precision bf16 or fp32 avoids fp16 overflow")


def driver_device(ray: str | None, device: str) -> str:
    """With --ray the GPUs are the workers': the driver (merge, small stages) keeps to the CPU unless told."""
    return "cpu" if ray and device == "auto" else device


def jpeg_mode(asked: str, loaded, executor=None) -> str:
    """--jpeg-decode resolved for the device the images are computed on: the model's, or a Ray executor's
    workers' (CUDA where the cluster has GPUs). A bad value, or device for a model whose preprocessing takes
    only PIL images: one line."""
    import torch

    from worker.cli.options import clean_errors, on_gpus
    from worker.compute.device_decode import resolve_mode

    with clean_errors(ValueError):
        return resolve_mode(asked, torch.device("cuda") if on_gpus(executor) else loaded.device, loaded.preprocess)


def suggest_cmd(model: str = typer.Argument(..., help="model name in the store"),
                layer: str = typer.Option(None, help="layer name (default: the model's default layer)"),
                top_words: int = typer.Option(5, min=1, help="top rendered words that vote on the family"),
                threshold: float = typer.Option(0.6, min=0.01, max=1.0, help="share of them that must agree"),
                captions: int = typer.Option(10, min=0, help="top dataset-example captions used for the label"),
                label_terms: int = typer.Option(3, min=1, help="terms in the short label"), force: bool = Force):
    """Automatic family guesses and short labels (source "auto"), from top words and example captions."""
    from worker.cli.options import run_stored_stage

    options = {"top_words": top_words, "threshold": threshold, "captions": captions, "label_terms": label_terms}
    (report,) = run_stored_stage("suggest", model, options, force, [layer])["layers"].values()
    families = ", ".join(f"{f} {n}" for f, n in sorted(report["families"].items())) or "none"
    typer.echo(f"{model}: {report['units']} units, {report['no_data']} without words or captions, "
               f"{report['labels_changed']} new labels; families: {families}")


@model_options
def attribution_cmd(source: ModelSource, name: ModelName = None, device: Device = "cpu",
                    corpus: str = typer.Option(None, help="images whose mean activation the autograd read-out is "
                                                          "evaluated at [default: the dataset-mean grey image]"),
                    sample: int = typer.Option(64, min=1, help="at most this many corpus images"),
                    readout: str = typer.Option("auto", help="read-out kept: auto (linear where it exists) | linear "
                                                             "| autograd"), force: bool = Force):
    """Text → neuron read-out (worker/analyses/attribution.py): a .npy in the cache that the text probe and search use.
    Prints how the linear read-out agrees with the autograd one (per-unit cosines) and stores that too."""
    from pathlib import Path

    from worker.analyses.attribution import agreement_lines
    from worker.cli.options import fail
    from worker.compute.readout import READOUT_KINDS

    if not source.weights:
        fail("attribution needs --weights: the server re-creates the text tower from them (random init can't be)")
    if readout not in READOUT_KINDS:
        fail(f"--readout must be one of {', '.join(READOUT_KINDS)}, got {readout!r}")
    if corpus is not None and not Path(corpus).expanduser().exists():
        fail(f"--corpus {corpus}: no such file or folder")
    options = {"corpus": corpus, "sample": sample, "readout": readout}
    model_name, report = run_stage("attribution", source, name, device, options, force)
    typer.echo(f"{model_name}: read-out {report['units']} units × {report['embed_dim']} dims "
               f"of {report['layer']} at {report['path']}")
    for line in agreement_lines(report):
        typer.echo(f"  {line}")


# -- the whole pipeline ---------------------------------------------------------------------------------
def stage_names(values: list[str]) -> list[str]:
    """--only/--skip values (repeatable or comma-separated), checked against the stages before any loading."""
    from worker.cli.options import fail
    from worker.pipeline.runner import UnknownStage, select_stages
    from worker.stages import STAGES

    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    try:
        select_stages(STAGES, names)
    except UnknownStage as e:
        fail(str(e))
    return names


@model_options
def build_cmd(source: ModelSource,
              corpus: str = typer.Option(None, help="image folder, .tar shard or .csv/.jsonl manifest (the "
                                                    "stages that read images are skipped without it)"),
              name: ModelName = None, device: Device = "auto",
              layers: list[str] = typer.Option([], "--layers", "--layer", help="layer name (repeatable; "
                                               "default: the penultimate layer)"),
              only: list[str] = typer.Option([], help="run only these stages (repeatable or comma-separated)"),
              skip: list[str] = typer.Option([], help="leave these stages out"),
              force: list[str] = typer.Option([], help="rerun these stages even when up to date"),
              word_list: str = typer.Option("clean", help="words stage: clean (common words without profanity "
                                                          "and slurs) | common (the paper's 10,000)"),
              ray: str = Ray,
              jpeg_decode: str = JpegDecode,
              words: int = typer.Option(10_000, min=1, help="words stage: drawn from this many most common words"),
              precision: Precision = "auto",
              progress: bool = typer.Option(True, "--progress/--no-progress")):
    """Run every stage that applies to the model, in dependency order, skipping what is up to date."""
    from pathlib import Path

    from store.settings import Settings
    from store.writes import open_store
    from worker.cli.options import clean_errors, fail, model_name_for, open_model
    from worker.data.word_lists import WORD_LISTS
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import run_pipeline, summary

    only, skip, force = stage_names(only), stage_names(skip), stage_names(force)
    if word_list not in WORD_LISTS:
        fail(f"--word-list must be one of {', '.join(WORD_LISTS)}, got {word_list!r}")
    if corpus is not None and not Path(corpus).expanduser().exists():
        fail(f"--corpus {corpus}: no such file or folder")
    executor = ray_executor(ray)
    loaded = open_model(source, driver_device(ray, device), precision, executor)
    examples = {"precision": loaded.precision, "jpeg_decode": jpeg_mode(jpeg_decode, loaded, executor)}
    ctx = BuildContext(open_store(Settings()), loaded, name or model_name_for(source.arch, source.weights),
                       Path(corpus).expanduser() if corpus else None, tuple(layers),
                       {"words": {"list": word_list, "n": words}, "examples": examples},
                       tuple(source.config_dirs), progress)
    with clean_errors():
        ctx.layer_names()
        outcomes = run_pipeline(ctx, only=only, skip=skip, force=force, executor=executor)
    typer.echo(summary(outcomes))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def ray_executor(address: str | None):
    """None (the serial build) without --ray; else a RayExecutor joined to the cluster (ray imported only here)."""
    if address is None:
        return None
    from worker.cli.options import fail
    from worker.pipeline.ray_executor import RayExecutor

    try:
        return RayExecutor(address)
    except ImportError:
        fail("--ray needs Ray: pip install 'clip-microscope[ray]'")
    except (ConnectionError, RuntimeError, ValueError) as e:
        fail(f"--ray {address}: cannot join the Ray cluster ({str(e).strip().splitlines()[0]})")


# pipeline order: the model frame, then the stages as `microscope build` runs them
WORKER_COMMANDS = [
    ("layers", layers_cmd), ("register", register_cmd), ("examples", examples_cmd), ("featurevis", featurevis_cmd),
    ("words", words_cmd), ("maps", maps_cmd), ("regions", regions_cmd), ("attribution", attribution_cmd),
    ("emotions", emotions_cmd), ("typographic", typographic_cmd), ("stroop", stroop_cmd), ("suggest", suggest_cmd),
    ("modality", modality_cmd), ("selflabels", selflabels_cmd), ("directions", directions_cmd),
]
worker_cli = command_group("Precompute neuron data into the store, one stage at a time (torch + open_clip).",
                           WORKER_COMMANDS)
