"""The selflabels stage: caption-free labels from the model's own text tower against the activation matrix,
each scored by its held-out AUC. One item per layer: compute labels and scores it (reading the matrix in
blocks), write stores them."""
from worker.pipeline.contract import BuildContext, Item, LayerStage


class SelfLabels(LayerStage):
    name = "selflabels"
    needs = ("examples",)
    produces = 'self-labels per unit (source "auto", with a held-out AUC), from the activation matrix'
    code = ("worker.analyses.selflabels", "worker.analyses.activations", "worker.compute.image_text")
    reads_corpus = True

    def settings(self, ctx: BuildContext) -> dict:
        return {"layers": ctx.layer_names(), "vocab": ctx.option("selflabels", "vocab", "default"),
                "template": ctx.option("selflabels", "template", "{}")}

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        """The layer's labels, their soft-WPMI and AUCs, and the human labels' AUCs (`compute_selflabels`)."""
        from worker.analyses.selflabels import compute_selflabels

        return compute_selflabels(ctx.store, ctx.loaded, ctx.model_name, item.payload,
                                  vocab=ctx.option("selflabels", "vocab", "default"),
                                  template=ctx.option("selflabels", "template", "{}"))

    def write_layer(self, ctx: BuildContext, part: dict, run_id: int) -> dict:
        from worker.analyses.selflabels import write_selflabels

        return write_selflabels(ctx.store, ctx.model_name, part, run_id)
