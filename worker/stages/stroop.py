"""The Stroop stage: colour words drawn in colours, zero-shot ink colour, congruent vs incongruent accuracy."""
from worker.pipeline.contract import BuildContext, Item, Stage


class Stroop(Stage):
    name = "stroop"
    produces = "the Stroop test: ink-colour accuracy on congruent and incongruent colour words"
    code = ("worker.analyses.stroop", "worker.compute.zeroshot", "worker.compute.render_text")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.stroop import stroop_settings

        return stroop_settings(ctx.loaded.image_size)

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        from worker.analyses.stroop import run_stroop

        return run_stroop(ctx.loaded)

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        from worker.analyses.stroop import write_stroop

        return write_stroop(ctx.store, merged)
