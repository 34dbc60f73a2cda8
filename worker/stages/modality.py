"""The modality stage: per unit, its response over a concept set to pictures (the examples stage's activation
matrix), rendered names and the text read-out; multimodality against a permuted-labels null."""
from worker.pipeline.contract import BuildContext, Item, Stage


class Modality(Stage):
    name = "modality"
    needs = ("examples",)
    produces = "modality profiles and multimodality scores per unit (reads the examples stage's activation matrix)"
    code = ("worker.analyses.modality", "worker.analyses.activations")
    reads_corpus = True

    def settings(self, ctx: BuildContext) -> dict:
        from worker.pipeline.contract import settings_hash

        return {"layers": ctx.layer_names(), "concept_set": ctx.option("modality", "concept_set", "auto"),
                "exclude": settings_hash({"paths": sorted(ctx.option("modality", "exclude", frozenset()))})}

    def compute(self, ctx: BuildContext, item: Item) -> None:
        """Reads the stored matrix as it writes each layer's profiles (`run_modality`)."""

    def write(self, ctx: BuildContext, merged, run_id: int) -> dict:
        from worker.analyses.modality import run_modality

        layers = {layer: run_modality(ctx.store, ctx.loaded, ctx.model_name, layer,
                                      concept_set=ctx.option("modality", "concept_set", "auto"),
                                      exclude=frozenset(ctx.option("modality", "exclude", frozenset())))
                  for layer in ctx.layer_names()}
        return {"layers": layers, "units": sum(r.get("units", 0) for r in layers.values())}
