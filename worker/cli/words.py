"""`microscope worker words | maps | regions`: rendered words, world maps and the region report.
Importing this module does not import torch (the commands do, when they run)."""
import typer

from worker.cli.options import Device, Force, ModelName, ModelSource, Precision, model_options

Layer = typer.Option(None, "--layer", help="layer name (default: the penultimate layer)")
Fonts = typer.Option("dejavu-sans,liberation-serif", help="comma-separated fonts (worker/compute/render_text.py FONTS)")
Scales = typer.Option("0.22,0.36", help="comma-separated font sizes as fractions of the image side")
BatchSize = typer.Option(256, min=1, help="images per forward pass")


def _style(fonts: str, scales: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The fonts and sizes asked for, checked before any model is loaded."""
    from worker.cli.options import fail
    from worker.compute.render_text import FontMissing, font_path

    try:
        names = tuple(f.strip() for f in fonts.split(",") if f.strip())
        for f in names:
            font_path(f)
        sizes = tuple(float(s) for s in scales.split(",") if s.strip())
    except (FontMissing, ValueError) as e:
        fail(str(e))
    if not names or not sizes or not all(0 < s <= 1 for s in sizes):
        fail("--fonts needs at least one font and --scales sizes between 0 and 1")
    return names, sizes


def _plan(loaded, style: tuple[tuple[str, ...], tuple[float, ...]]):
    from worker.compute.render_text import RenderPlan

    return RenderPlan(canvas=loaded.image_size, fonts=style[0], scales=style[1])


@model_options
def words_cmd(source: ModelSource, name: ModelName = None,
              device: Device = "auto", layer: str = Layer, words: int = typer.Option(
                  10_000, min=1, help="drawn from this many of wordfreq's most common English words"),
              word_list: str = typer.Option("clean", help="clean (without better-profanity's profanity and slur "
                                                          "list) | common (the paper's list)"),
              fonts: str = Fonts, scales: str = Scales, batch_size: int = BatchSize,
              chunk_size: int = typer.Option(512, min=1, help="words per checkpoint"), force: bool = Force,
              precision: Precision = "auto"):
    """Rendered-word scores: top and most negative words per unit, the words x units matrix."""
    import time

    from worker.cli.options import fail, run_stage
    from worker.data.word_lists import WORD_LISTS

    if word_list not in WORD_LISTS:
        fail(f"--word-list must be one of {', '.join(WORD_LISTS)}, got {word_list!r}")
    style = _style(fonts, scales)
    start = time.perf_counter()
    model_name, report = run_stage("words", source, name, device, lambda loaded: {
        "list": word_list, "n": words, "plan": _plan(loaded, style), "batch_size": batch_size,
        "chunk_size": chunk_size}, force, [layer], precision)
    typer.echo(f"{model_name}: {report} in {time.perf_counter() - start:.1f} s")


@model_options
def maps_cmd(source: ModelSource, name: ModelName = None,
             device: Device = "auto", layer: str = Layer,
             crops: int = typer.Option(256, min=0, help="random map crops (on top of a covering tiling)"),
             cities: int = typer.Option(300, min=1, help="how many of the largest cities to render"),
             seed: int = typer.Option(0, help="seed of the random crops"),
             fonts: str = Fonts, scales: str = Scales, batch_size: int = BatchSize, force: bool = Force,
             precision: Precision = "auto"):
    """World map activations with heat overlays; country and city name scores with choropleths."""
    import time

    from worker.cli.options import run_stage

    style = _style(fonts, scales)
    start = time.perf_counter()
    model_name, report = run_stage("maps", source, name, device, lambda loaded: {
        "crops": crops, "seed": seed, "cities": cities, "plan": _plan(loaded, style), "batch_size": batch_size},
        force, [layer], precision)
    typer.echo(f"{model_name}: {report} in {time.perf_counter() - start:.1f} s")


def regions_cmd(model: str = typer.Argument(..., help="the model's name in the store"),
                layer: str = typer.Option(None, "--layer", help="layer name (default: the model's default layer)"),
                force: bool = Force):
    """Region report: the share of each unit's top-5 rendered words that are geographic."""
    from worker.cli.options import run_stored_stage

    ((layer, report),) = run_stored_stage("regions", model, {}, force, [layer])["layers"].items()
    typer.echo(f"{model} {layer}: {report}")
