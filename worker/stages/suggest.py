"""The suggest stage: automatic family guesses and short labels from top words and example captions."""
from dataclasses import asdict

from worker.pipeline.contract import BuildContext, Item, Stage


def options(ctx: BuildContext):
    from worker.analyses.suggest import SuggestOptions

    return SuggestOptions(**ctx.options.get("suggest", {}))


class Suggest(Stage):
    name = "suggest"
    needs = ("words",)
    after = ("examples",)
    produces = 'automatic family guesses and short labels (source "auto") per unit'
    code = ("worker.analyses.suggest", "worker.data.lexicons", "worker.data.places", "worker.data.feelings")
    reads_model = False  # only the stored words and captions: `worker suggest MODEL` loads no model

    def settings(self, ctx: BuildContext) -> dict:
        return {"layers": ctx.layer_names(), **asdict(options(ctx))}

    def items(self, ctx: BuildContext) -> list[Item]:
        return [Item(layer, layer) for layer in ctx.layer_names()]

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        """The layer's suggestions, from the stored words and captions (nothing written)."""
        from worker.analyses.suggest import compute_suggestions

        return compute_suggestions(ctx.store, ctx.model_name, item.payload, options(ctx))

    def merge(self, ctx: BuildContext, parts: list) -> list:
        return parts

    def write(self, ctx: BuildContext, merged: list, run_id: int) -> dict:
        from worker.analyses.suggest import write_suggestions

        layers = {got["layer"]: write_suggestions(ctx.store, ctx.model_name, got, options(ctx)) for got in merged}
        return {"layers": layers, "units": sum(r["units"] for r in layers.values())}
