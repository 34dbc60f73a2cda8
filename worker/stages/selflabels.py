"""The selflabels stage: caption-free labels from the model's own text tower against the activation matrix,
each scored by its held-out AUC."""
from worker.pipeline.contract import BuildContext, Item, Stage


class SelfLabels(Stage):
    name = "selflabels"
    needs = ("examples",)
    produces = 'self-labels per unit (source "auto", with a held-out AUC), from the activation matrix'
    code = ("worker.analyses.selflabels", "worker.analyses.activations")
    reads_corpus = True

    def settings(self, ctx: BuildContext) -> dict:
        return {"layers": ctx.layer_names(), "vocab": ctx.option("selflabels", "vocab", "default")}

    def compute(self, ctx: BuildContext, item: Item) -> None:
        """Reads the stored matrix as it labels and writes each layer (`run_selflabels`)."""

    def write(self, ctx: BuildContext, merged, run_id: int) -> dict:
        from worker.analyses.selflabels import run_selflabels

        layers = {layer: run_selflabels(ctx.store, ctx.loaded, ctx.model_name, layer,
                                        vocab=ctx.option("selflabels", "vocab", "default"))
                  for layer in ctx.layer_names()}
        return {"layers": layers, "units": sum(r.get("units", 0) for r in layers.values())}
