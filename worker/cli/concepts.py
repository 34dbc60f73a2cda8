"""`microscope worker modality | selflabels | directions`: the concept analyses, read from the activation
matrix the examples stage wrote (worker/analyses/modality.py, selflabels.py, directions.py)."""
import typer

from worker.cli.options import Device, Force, ModelName, ModelSource, model_options

Layer = typer.Option(None, help="layer name (default: the penultimate layer)")


@model_options
def modality_cmd(source: ModelSource, name: ModelName = None,
                 device: Device = "cpu", layer: str = Layer,
                 concepts: str = typer.Option("auto", help="auto | captions | folders | words | imagenet"),
                 min_images: int = typer.Option(3, min=1, help="pictures a concept needs"),
                 most: int = typer.Option(1000, min=2, help="at most this many concepts (the most frequent)"),
                 permutations: int = typer.Option(20, min=1, help="permutations of the null"), force: bool = Force):
    """Modality profiles and multimodality scores of a layer's units (pictures, rendered names, read-out)."""
    from worker.cli.options import run_stage

    options = {"concept_set": concepts, "min_images": min_images, "most": most, "permutations": permutations}
    model_name, report = run_stage("modality", source, name, device, options, force, [layer])
    for r in report["layers"].values():
        typer.echo(f"{model_name}: {r['above']} of {r['units']} units above the null's 99th percentile "
                   f"({r['p99']:.3f}) over {r['concepts']} concepts")


@model_options
def selflabels_cmd(source: ModelSource, name: ModelName = None,
                   device: Device = "cpu", layer: str = Layer,
                   vocabulary: str = typer.Option("default", help="default (ImageNet classes + common words) | "
                                                                  "imagenet | words | a file with one concept a line"),
                   template: str = typer.Option("{}", help="text prompt with one {} for a concept"),
                   force: bool = Force):
    """Labels without captions (CLIP-Dissect soft-WPMI over a vocabulary), each with a held-out AUC."""
    from worker.cli.options import fail, run_stage

    if template.count("{}") != 1:
        fail(f"--template must hold exactly one {{}}, got {template!r}")
    options = {"vocab": vocabulary, "template": template}
    model_name, report = run_stage("selflabels", source, name, device, options, force, [layer])
    for r in report["layers"].values():
        auc = "none (no held-out image of any label)" if r["median_auc"] is None else f"{r['median_auc']:.3f}"
        typer.echo(f"{model_name}: {r['units']} units labelled ({r['labels_changed']} new), median held-out AUC "
                   f"{auc}; {r['human_scored']} human labels scored")


@model_options
def directions_cmd(source: ModelSource, name: ModelName = None,
                   device: Device = "cpu", steps: int = typer.Option(512, min=1, help="optimisation steps"),
                   force: bool = typer.Option(False, "--force", help="render every saved direction again")):
    """Feature visualizations (and stored top images) of the saved concept directions."""
    from worker.cli.options import run_stage

    model_name, r = run_stage("directions", source, name, device, {"steps": steps, "force": force}, force)
    typer.echo(f"{model_name}: {r['directions']} saved directions, {r['rendered']} rendered, {r['skipped']} "
               f"up to date, {r['images']} images stored")
