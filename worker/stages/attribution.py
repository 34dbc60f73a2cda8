"""The attribution stage: the text -> neuron read-out of the penultimate layer, for /probe and /search."""
from worker.pipeline.contract import BuildContext, Item, Stage


def config_dirs(ctx: BuildContext) -> list:
    from worker.analyses.attribution import registered_config_dirs

    return list(ctx.config_dirs) or registered_config_dirs(ctx.loaded.arch)


class Attribution(Stage):
    name = "attribution"
    produces = "the read-out matrix (penultimate units x embedding) the live probe and search use"
    code = ("worker.analyses.attribution",)

    def applies(self, ctx: BuildContext) -> str | None:
        return None if ctx.loaded.weights else "random init: a server could not re-create its text tower"

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.attribution import portable_path

        return {"config_dirs": [portable_path(d) for d in config_dirs(ctx)]}

    def compute(self, ctx: BuildContext, item: Item) -> None:
        """One matrix product over the weights; `store_readout` computes it as it writes."""

    def write(self, ctx: BuildContext, merged, run_id: int) -> dict:
        from worker.analyses.attribution import store_readout

        art = store_readout(ctx.store, ctx.model_name, ctx.loaded, config_dirs(ctx))
        return {"units": art.meta["units"], "embed_dim": art.meta["embed_dim"], "layer": art.layer, "path": art.path}
