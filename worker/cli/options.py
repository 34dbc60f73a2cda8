"""Options every `microscope worker …` command that loads a model shares, so all stages take a model the
same way. Importing this module does not import torch.

Use them in a stage's command like this (`model_options` gives the command ARCH, --weights, --config-dir,
--quickgelu, --mean, --std, --interpolation, --resize-mode, --image-size and --cache-dir, and hands them
to it as one `ModelSource`)::

    from worker.cli.options import Device, ModelName, ModelSource, model_name_for, model_options, open_model

    @worker_cli.command("mystage")
    @model_options
    def mystage_cmd(source: ModelSource, name: ModelName = None, device: Device = "auto"):
        loaded = open_model(source, device)       # known failures: one line on stderr, exit code 2
        model_name = name or model_name_for(source.arch, source.weights)

`open_model` already prints WeightsMissing / UnknownModel / CheckpointError / a missing config dir as one
line and exits 2.
"""
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer.core import TyperGroup

from store.keys import KeyError_, check_name
from worker.compute.load_settings import INTERPOLATIONS, RESIZE_MODES, LoadOverrides, ModelSource

Arch = Annotated[str, typer.Argument(
    help="open_clip architecture: RN50, RN50x4, RN101, ViT-B-32 … or a config name from --config-dir",
    show_default=False)]
Weights = Annotated[str | None, typer.Option(
    "--weights", "-w", help="open_clip weights tag found offline (e.g. openai) or a local .pt/.safetensors "
                            "checkpoint; omit for random init")]
ConfigDirs = Annotated[list[Path] | None, typer.Option(
    "--config-dir", help="directory of extra open_clip model JSON configs (repeatable)")]
ModelName = Annotated[str | None, typer.Option(
    "--name", help="the model's name in the store and in URLs (default: from arch and weights)")]
Device = Annotated[str, typer.Option("--device", help="cuda | cpu | auto (cuda when there is one)")]
Precision = Annotated[str, typer.Option(
    "--precision", help="fp32 | bf16 | fp16 | auto (bf16 on a GPU that has it, else fp32); part of the "
                        "job: a checkpoint is resumed only at its own precision")]
QuickGelu = Annotated[bool | None, typer.Option(
    "--quickgelu/--no-quickgelu", help="build with QuickGELU (default: as the weights tag says; on for OpenAI's "
                                       "TorchScript archives; else as the model config says)", show_default=False)]
Triple = Annotated[str | None, typer.Option(help="three numbers R,G,B (default: the weights tag's, else OpenAI's)")]
Interpolation = Annotated[str | None, typer.Option(
    "--interpolation", help=f"{' | '.join(INTERPOLATIONS)} resize (default: the tag's, else bicubic)")]
ResizeMode = Annotated[str | None, typer.Option(
    "--resize-mode", help=f"{' | '.join(RESIZE_MODES)} (default: the tag's, else shortest)")]
ImageSize = Annotated[int | None, typer.Option(
    "--image-size", help="input side in pixels (default: the model config's)")]
CacheDir = Annotated[str | None, typer.Option(
    "--cache-dir", envvar="MICROSCOPE_WEIGHTS_CACHE",
    help="where tags' weights are looked for, as open_clip's cache_dir: <dir>/models--…/snapshots/… and "
         "<dir>/RN50.pt (default: the Hugging Face cache and ~/.cache/clip)")]


Force = typer.Option(False, "--force", help="recompute even when the store is up to date")

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """One clean line on stderr and exit code 2 (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def clean_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the worker's known input errors (and `extra` ones) into `fail`."""
    from worker.compute.corpus import CorpusError
    from worker.compute.layers import UnknownLayer
    from worker.compute.models import CheckpointError, UnknownModel, WeightsMissing
    from worker.compute.precision import PrecisionMismatch
    from worker.compute.towers import Unsupported

    try:
        yield
    except (WeightsMissing, UnknownModel, CheckpointError, UnknownLayer, Unsupported, CorpusError, KeyError_,
            FileNotFoundError, PrecisionMismatch, *extra) as e:
        fail(str(e))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
        fail(f"--device must be cuda, cpu or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda asked for, but torch sees no CUDA device here; use --device cpu")
    return device


def _source(arch: Arch, weights: Weights = None, config_dir: ConfigDirs = None, quickgelu: QuickGelu = None,
            mean: Triple = None, std: Triple = None, interpolation: Interpolation = None,
            resize_mode: ResizeMode = None, image_size: ImageSize = None, cache_dir: CacheDir = None) -> ModelSource:
    """The options `model_options` adds, checked, as one object."""
    try:
        overrides = LoadOverrides(quickgelu, triple(mean, "mean"), triple(std, "std"), interpolation, resize_mode,
                                  image_size, cache_dir)
    except ValueError as e:
        fail(str(e))
    return ModelSource(arch, weights, tuple(str(d) for d in config_dir or ()), overrides)


def triple(text: str | None, name: str) -> tuple[float, ...] | None:
    """'0.5,0.5,0.5' (or spaces) -> (0.5, 0.5, 0.5)."""
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        fail(f"--{name} takes three numbers like 0.5,0.5,0.5, got {text!r}")


_SOURCE_OPTIONS = list(inspect.signature(_source).parameters.values())  # the shared options, as typer reads them


def model_options(command: Callable) -> Callable:
    """Give `command` the shared model-loading options in place of its `source: ModelSource` parameter.

    Why a decorator: typer has no option groups, and copying ten flags into every stage would let them drift."""
    params = list(inspect.signature(command).parameters.values())
    at = [p.name for p in params].index("source")
    new = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*params[:at], *_SOURCE_OPTIONS, *params[at + 1:]]]

    @functools.wraps(command)
    def run(**kwargs):
        source = _source(**{p.name: kwargs.pop(p.name) for p in _SOURCE_OPTIONS})
        return command(source=source, **kwargs)

    run.__signature__ = inspect.signature(command).replace(parameters=new)
    run.__annotations__ = {p.name: p.annotation for p in new}
    return run


def open_model(source: ModelSource, device: str = "auto", precision: str = "fp32", executor=None):
    """`worker.compute.models.load_model` for a command: a bad name, missing or misfit weights, or an image tower
    outside the catalogue (`worker.compute.towers`) exit 2 with one line.
    `precision` (fp32 | bf16 | fp16 | auto) is resolved for the device the images are computed on (a Ray
    executor's GPUs, else the model's) and kept on the model."""
    from worker.compute.layers import catalogue
    from worker.compute.models import load_model

    device = resolve_device(device)
    resolved = "bf16" if precision == "auto" and on_gpus(executor) else precision_for(precision, device)
    with clean_errors():
        loaded = load_model(source.arch, source.weights, device, source.config_dirs, source.overrides)
        catalogue(loaded)
    loaded.precision = resolved
    return loaded


def on_gpus(executor) -> bool:
    """Whether `executor` (None: this process) computes on a Ray cluster's GPUs. There `--precision auto` is
    bf16 (every data-centre GPU since Ampere has it; a worker whose GPU lacks it stops with one line), since
    the driver, on the CPU, cannot ask the GPUs itself."""
    return executor is not None and "num_gpus" in executor.resources()


def precision_for(asked: str, device) -> str:
    """`--precision` resolved for the model's device (`worker.compute.precision`); a bad value exits 2."""
    from worker.compute.precision import resolve_precision

    try:
        return resolve_precision(asked, device)
    except ValueError as e:
        fail(str(e))


def model_name_for(arch: str, weights: str | None) -> str:
    """The default store name: the architecture, plus the weights tag or checkpoint file stem."""
    if not weights:
        name = arch
    else:
        tag = Path(weights).stem if ("/" in weights or "." in weights) else weights
        name = f"{arch}_{tag}"
    name = "".join(c if c.isalnum() or c in "_.@+-" else "_" for c in name)[:128]
    try:
        return check_name(name, "model")
    except KeyError_:
        fail(f"cannot make a model name from {arch!r} and {weights!r}; pass --name")


class InOrder(TyperGroup):
    """A command group whose --help lists commands in the order of its table (pipeline order)."""

    order: tuple[str, ...] = ()

    def list_commands(self, ctx) -> list[str]:
        return sorted(self.commands, key=lambda n: self.order.index(n) if n in self.order else len(self.order))


def command_group(help: str, commands: Sequence[tuple[str, Callable | typer.Typer]], **options) -> typer.Typer:
    """The one way commands are registered: a group from (name, function or sub-group) pairs, in order."""
    in_order = type("InOrder", (InOrder,), {"order": tuple(name for name, _ in commands)})
    group = typer.Typer(help=help, cls=in_order, no_args_is_help=options.pop("no_args_is_help", True), **options)
    for name, command in commands:
        if isinstance(command, typer.Typer):
            group.add_typer(command, name=name)
        else:
            group.command(name)(command)
    return group


# -- one stage through the pipeline: the same skipping as `microscope build --only STAGE`
def run_stage(stage: str, source: ModelSource, name: str | None, device: str, options: dict | Callable,
              force: bool, layers: Sequence[str | None] = (), precision: str = "fp32", corpus: Path | None = None,
              executor=None, progress: bool = True) -> tuple[str, dict]:
    """Load the model, run `stage` alone through the pipeline (skipped while up to date unless `force`), on
    `executor` (default: this process); (model name, the report of its last finished run). A failure or a
    reason it does not apply: one line. `options` may be a function of the loaded model (a render plan
    needs its image size)."""
    from store.settings import Settings
    from store.writes import open_store
    from worker.pipeline.contract import BuildContext

    loaded = open_model(source, device, precision, executor)
    ctx = BuildContext(open_store(Settings()), loaded, name or model_name_for(source.arch, source.weights), corpus,
                       tuple(x for x in layers if x), {stage: options(loaded) if callable(options) else options},
                       tuple(source.config_dirs), progress)
    return ctx.model_name, run_alone(ctx, stage, force, executor)


def run_stored_stage(stage: str, model_name: str, options: dict, force: bool,
                     layers: Sequence[str | None] = ()) -> dict:
    """`run_stage` for a stage that reads only the store (regions, suggest): on the model stored under
    `model_name`, loading none; the report of its last finished run."""
    from sqlalchemy import select

    from store.schema import Model
    from store.settings import Settings
    from store.writes import open_store
    from worker.pipeline.contract import BuildContext

    store = open_store(Settings())
    with store.sessions() as session:
        models = list(session.scalars(select(Model.name).order_by(Model.name)))
    if model_name not in models:
        fail(f"no model {model_name!r} in the store (models: {', '.join(models) or 'none'}); "
             f"`microscope build` or `microscope worker words ARCH --name {model_name}` makes one")
    ctx = BuildContext(store, None, model_name, None, tuple(x for x in layers if x), {stage: options},
                       progress=False)
    return run_alone(ctx, stage, force)


def run_alone(ctx, stage: str, force: bool, executor=None) -> dict:
    from worker.pipeline.runner import last_done, run_pipeline

    with clean_errors():
        ctx.layer_names()
    (got,) = run_pipeline(ctx, only=[stage], force=[stage] if force else [], executor=executor, echo=lambda _: None)
    if got.status == "failed" or (got.status == "skipped" and got.fingerprint is None):
        fail(got.reason)
    if got.status == "skipped":
        typer.echo(f"{ctx.model_name}: {stage} is up to date, its last run's results (--force reruns it):")
    return last_done(ctx, stage).report
