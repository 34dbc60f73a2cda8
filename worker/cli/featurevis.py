"""`microscope worker featurevis`: render a layer's neurons into the store, the featurevis stage run alone
through the pipeline (worker/stages/featurevis.py). Imports torch only when run."""
from pathlib import Path

import typer

from worker.cli.options import Device, Force, ModelName, ModelSource, Precision, model_options


def parse_units(text: str | None) -> list[int] | None:
    """'0-63', '5', '0-9,20,30-31' -> unit indices; None or '' -> all units."""
    if not text:
        return None
    units: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"--units takes whole numbers and ranges like 0-63,100; got {text!r}")
        start, stop = int(lo), int(hi) if sep else int(lo)
        if stop < start:
            raise ValueError(f"--units range {part!r} runs backwards")
        units.extend(range(start, stop + 1))
    return units


@model_options
def featurevis_cmd(
    source: ModelSource, name: ModelName = None, device: Device = "auto",
    layer: str = typer.Option(None, help="layer name (default: the penultimate layer)"),
    units: str = typer.Option(None, help="units to render, e.g. 0-63 or 0,5,9-12 (default: all)"),
    steps: int = typer.Option(512, min=1, help="Adam steps per image"),
    batch: int = typer.Option(8, min=1, help="images per optimisation: neurons rendered at once"),
    size: int = typer.Option(None, min=8, help="image side in pixels (default: the model's native resolution)"),
    lr: float = typer.Option(0.05, min=0.0, help="Adam learning rate"),
    seed: int = typer.Option(0, help="base seed; each image's seed derives from it, its unit and its kind"),
    objective: str = typer.Option("channel", help="channel (mean over positions) | neuron (centre position)"),
    diversity: int = typer.Option(0, min=0, help="images per neuron in a diversity strip (0 = none)"),
    facets: list[str] = typer.Option([], help="DIR (each sub-folder of images is a facet), NAME=DIR, or the NAME "
                                              "of a probe already stored for this model; repeatable"),
    generic: Path = typer.Option(None, help="generic images the facet probes contrast with (default: the "
                                            "images of the other facets)"),
    facet_layer: str = typer.Option(None, help="lower layer the facet probes read (default: the one below --layer)"),
    retrain_probes: bool = typer.Option(False, help="train facet probes again even if stored"),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="channels-last weights for convolutional towers (faster at full size)"),
    precision: Precision = "auto",
    progress: bool = typer.Option(True, "--progress/--no-progress"), force: bool = Force,
):
    """Feature visualizations of a layer's neurons: plain, a diversity strip, one per facet. Resumable; skipped
    while up to date (--force reruns it, --retrain-probes too)."""
    import torch

    from worker.analyses.facets import parse_facet_specs
    from worker.analyses.featurevis import FeatureVisSettings
    from worker.cli.options import clean_errors, precision_for, resolve_device, run_stage
    from worker.compute.featurevis.render import RenderSettings

    device = resolve_device(device)
    with clean_errors(ValueError):
        wanted = parse_units(units)
        render = {"steps": steps, "size": size, "lr": lr, "precision": precision_for(precision, device)}
        settings = {"seed": seed, "batch": batch, "diversity": diversity, "objective": objective}
        FeatureVisSettings(RenderSettings(**render), **settings)  # checked before the model loads
        parse_facet_specs(facets, generic)
    options = {**render, **settings, "units": wanted, "channels_last": channels_last, "facet_specs": facets,
               "generic": generic, "facet_layer": facet_layer, "retrain_probes": retrain_probes}
    torch.manual_seed(0)  # a random-init model is then the same model in every run
    model_name, report = run_stage("featurevis", source, name, device, options, force or retrain_probes, [layer],
                                   progress=progress)
    for facet, info in report.get("facets", {}).get("probes", {}).items():
        typer.echo(f"facet {facet}: probe accuracy {info['accuracy']:.3f}" + (" (trained)" if info["trained"] else ""))
    for layer_name, got in report["layers"].items():
        typer.echo(layer_line(model_name, layer_name, got, report.get("facets")))


def layer_line(model_name: str, layer: str, plain: dict, faceted: dict | None) -> str:
    """What a layer's renders came to: a unit counts once whether its plain or its faceted images were new."""
    got = dict(plain)
    if faceted is not None and faceted["layer"] == layer:
        got["rendered"] = max(plain["rendered"], faceted["rendered"])
        got["images"] += faceted["images"]
        got["seconds"] += faceted["seconds"]
    per = got["seconds"] / got["rendered"] if got["rendered"] else None
    return (f"{model_name}/{layer}: rendered {got['rendered']} neurons ({got['images']} images), "
            f"skipped {got['units'] - got['rendered']} already done" + (f"; {per:.2f} s per neuron" if per else ""))
