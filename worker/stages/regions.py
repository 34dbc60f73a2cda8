"""The regions stage: per layer, the share of each unit's top-5 rendered words that name a place."""
from worker.pipeline.contract import BuildContext, Item, Stage


class Regions(Stage):
    name = "regions"
    needs = ("words",)
    produces = "the region report: units whose top-5 words are geographic (reads the words stage's scores)"
    code = ("worker.analyses.regions", "worker.data.places")
    reads_model = False  # only the stored word scores: `worker regions MODEL` loads no model

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.regions import regions_settings

        return {"layers": ctx.layer_names(), **regions_settings()}

    def items(self, ctx: BuildContext) -> list[Item]:
        return [Item(layer, layer) for layer in ctx.layer_names()]

    def compute(self, ctx: BuildContext, item: Item) -> tuple[str, dict]:
        from worker.analyses.regions import compute_regions

        return item.payload, compute_regions(ctx.store, ctx.model_name, item.payload)

    def merge(self, ctx: BuildContext, parts: list) -> list:
        return parts

    def write(self, ctx: BuildContext, merged: list, run_id: int) -> dict:
        from worker.analyses.regions import write_regions

        layers = {layer: write_regions(ctx.store, ctx.model_name, layer, meta, run_id) for layer, meta in merged}
        return {"layers": layers, "units": sum(r["units_scored"] for r in layers.values())}
