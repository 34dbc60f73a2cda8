"""The directions stage: feature visualizations and top images of the saved concept directions (the curated
`directions` table; none saved: a run that renders nothing). It reruns when a direction is saved (its
settings hold the saved directions' digest) and renders only those whose query, weights or steps changed."""
from worker.pipeline.contract import BuildContext, Item, Stage


def steps(ctx: BuildContext) -> int:
    return ctx.option("directions", "steps", 512)


class Directions(Stage):
    name = "directions"
    needs = ("attribution",)
    after = ("examples",)
    produces = "feature visualizations and top/bottom images of the saved concept directions"
    code = ("worker.analyses.directions", "app.directions", "worker.compute.featurevis.render",
            "worker.compute.featurevis.objectives")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.directions import saved_digest

        return {"steps": steps(ctx), "saved": saved_digest(ctx.store, ctx.model_name)}

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        from worker.analyses.directions import compute_directions

        return compute_directions(ctx.store, ctx.loaded, ctx.model_name, steps(ctx),
                                  ctx.option("directions", "force", False))

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        from worker.analyses.directions import write_directions

        return {**write_directions(ctx.store, ctx.loaded, ctx.model_name, merged, run_id),
                "units": merged["directions"]}
