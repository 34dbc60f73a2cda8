"""The attribution stage: the text -> neuron read-out of the penultimate layer, for /probe and /search.
Options (`microscope worker attribution`): `corpus` and `sample` (the images the autograd read-out is
evaluated at; default the dataset-mean grey image) and `readout` (auto | linear | autograd)."""
from pathlib import Path

from worker.pipeline.contract import BuildContext, Item, Stage


def config_dirs(ctx: BuildContext) -> list:
    from worker.analyses.attribution import registered_config_dirs

    return list(ctx.config_dirs) or registered_config_dirs(ctx.loaded.arch)


def opts(ctx: BuildContext) -> dict:
    return {"corpus": None, "sample": 64, "readout": "auto", **ctx.options.get("attribution", {})}


class Attribution(Stage):
    name = "attribution"
    produces = "the read-out matrix (penultimate units x embedding) the live probe and search use"
    code = ("worker.analyses.attribution", "worker.compute.readout")

    def applies(self, ctx: BuildContext) -> str | None:
        return None if ctx.loaded.weights else "random init: a server could not re-create its text tower"

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.attribution import portable_path
        from worker.pipeline.contract import corpus_digest

        o = opts(ctx)
        corpus = None if o["corpus"] is None else Path(o["corpus"]).expanduser()
        return {"config_dirs": [portable_path(d) for d in config_dirs(ctx)], "readout": o["readout"],
                "corpus": corpus_digest(corpus), "sample": o["sample"] if corpus else None}

    def compute(self, ctx: BuildContext, item: Item) -> tuple:
        """(layer, W, meta): the read-out and what the artifact keeps of it (nothing written)."""
        from worker.analyses.attribution import compute_readout, sample_images
        from worker.compute.layers import layer_spec

        o = opts(ctx)
        images, where = sample_images(ctx.loaded, o["corpus"], o["sample"])
        return (layer_spec(ctx.loaded).name,
                *compute_readout(ctx.loaded, config_dirs(ctx), images, o["readout"], where))

    def write(self, ctx: BuildContext, merged: tuple, run_id: int) -> dict:
        from worker.analyses.attribution import write_readout

        art = write_readout(ctx.store, ctx.model_name, *merged)
        return {"layer": art.layer, "path": art.path, **art.meta}
