"""`microscope worker featurevis`: render a layer's neurons into the store. Imports torch only when run."""
from pathlib import Path

import typer

from worker.cli.options import Device, ModelName, ModelSource, Precision, model_options


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
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Feature visualizations of a layer's neurons: plain, a diversity strip, one per facet. Resumable."""
    from store.settings import Settings
    from worker.analyses.featurevis import FeatureVisSettings
    from worker.cli.options import clean_errors, model_name_for, precision_for, resolve_device
    from worker.compute.featurevis.render import RenderSettings

    device = resolve_device(device)
    with clean_errors(ValueError):
        wanted = parse_units(units)
        render = RenderSettings(steps=steps, size=size, lr=lr, precision=precision_for(precision, device))
        settings = FeatureVisSettings(render, seed=seed, batch=batch,
                                      diversity=diversity, objective=objective)
    model_name = name or model_name_for(source.arch, source.weights)
    report = run_command(Settings(), source, device, model_name, layer, wanted, settings,
                         facets, generic, facet_layer, retrain_probes, channels_last, progress)
    for facet, info in report.get("probes", {}).items():
        typer.echo(f"facet {facet}: probe accuracy {info['accuracy']:.3f}" + (" (trained)" if info["trained"] else ""))
    per = report["seconds_per_neuron"]
    typer.echo(f"{model_name}/{report['layer']}: rendered {report['rendered']} neurons ({report['images']} images), "
               f"skipped {report['skipped']} already done" + (f"; {per:.2f} s per neuron" if per else ""))


def run_command(app_settings, source, device, model_name, layer, units, settings, facets, generic,
                facet_layer, retrain, channels_last, progress) -> dict:
    import torch

    from store.writes import open_store, recorded_run, register_model
    from worker.analyses.featurevis import run_layer
    from worker.cli.options import clean_errors, open_model
    from worker.compute.layers import catalogue, layer_spec

    torch.manual_seed(0)  # a random-init model is then the same model in every run
    loaded = open_model(source, device)
    with clean_errors(ValueError):
        spec = layer_spec(loaded, layer)
        lower = facet_layer_for(loaded, spec.name, facet_layer) if facets else None
        store = open_store(app_settings)
        with store.sessions.begin() as session:
            register_model(session, model_name, loaded.arch, source.weights, loaded.image_size, catalogue(loaded),
                           load=loaded.record())
        with recorded_run(store, "featurevis", model_name, {**settings.as_dict(), "facets": facets},
                          layer=spec.name) as report:
            probes, probe_report = resolve_facets(store, loaded, model_name, lower, facets, generic, retrain,
                                                  report["run_id"]) if facets else ({}, {})
            report.update(run_layer(store, loaded, model_name, spec.name, units, settings, probes,
                                    run_id=report["run_id"], progress=progress, channels_last=channels_last),
                          layer=spec.name, probes=probe_report)
    return report


def facet_layer_for(loaded, target: str, asked: str | None) -> str:
    """The layer facet probes read: the one asked for (it must lie below `target`), else the one below."""
    from worker.compute.layers import catalogue, layer_spec

    names = [s.name for s in catalogue(loaded)]
    if asked is not None:
        layer_spec(loaded, asked)
        if names.index(asked) >= names.index(target):
            raise ValueError(f"--facet-layer {asked} must lie below --layer {target}")
        return asked
    if names.index(target) == 0:
        raise ValueError(f"{target} is the lowest layer; facets need a layer below it")
    return names[names.index(target) - 1]


def resolve_facets(store, loaded, model_name: str, layer: str, specs: list[str], generic: Path | None,
                   retrain: bool, run_id: int | None):
    """Probes for the --facets specs: folders are (trained if need be and) stored, names must be stored."""
    from worker.analyses.facets import check_facet_name, ensure_probes, facet_folders, load_probes

    folders: dict[str, Path] = {}
    named: list[str] = []
    for spec in specs:
        facet, sep, folder = spec.partition("=")
        if sep:
            folders[check_facet_name(facet)] = Path(folder).expanduser()
        elif Path(spec).expanduser().is_dir():
            found = facet_folders(spec)
            if not found:
                raise ValueError(f"--facets {spec}: no sub-folders with images in it (each sub-folder is a facet)")
            folders.update(found)
        else:
            named.append(check_facet_name(spec))
    for folder in [*folders.values(), *([generic] if generic else [])]:
        if not folder.is_dir():
            raise FileNotFoundError(f"facet folder {folder} does not exist")
    probes, report = ensure_probes(store, loaded, model_name, layer, folders, generic, retrain, run_id=run_id)
    stored = load_probes(store, model_name, layer)
    missing = [n for n in named if n not in stored]
    if missing:
        raise ValueError(f"no stored probe for facets {missing} on {model_name}/{layer}; stored: "
                         f"{', '.join(stored) or 'none'}. Pass NAME=DIR to train one.")
    for n in named:
        probes[n], report[n] = stored[n], {"accuracy": stored[n].accuracy, "trained": False}
    return probes, report
