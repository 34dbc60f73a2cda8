"""The emotions stage: "I feel {word}" attribution vectors, sparse codes per word, an NMF atlas."""
from pathlib import Path

from worker.pipeline.contract import BuildContext, Item, Stage


def opts(ctx: BuildContext) -> dict:
    from worker.data.feelings import FEELINGS

    return {"feelings_path": Path(FEELINGS), "method": "lasso", "neurons": 6, "factors": 7,
            **ctx.options.get("emotions", {})}


class Emotions(Stage):
    name = "emotions"
    produces = "emotion composition: per feeling word a sparse code over neurons, and the emotion atlas"
    code = ("worker.analyses.emotions", "worker.data.feelings", "worker.analyses.attribution")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.emotions import emotions_settings
        from worker.pipeline.contract import settings_hash

        o = opts(ctx)
        return {**emotions_settings(o["feelings_path"], o["method"], o["neurons"], o["factors"]),
                "feelings_text": settings_hash({"text": Path(o["feelings_path"]).read_text(encoding="utf-8")})}

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        from worker.analyses.emotions import compose
        from worker.data.feelings import read_feelings

        o = opts(ctx)
        return compose(ctx.loaded, read_feelings(Path(o["feelings_path"])), o["method"], o["neurons"], o["factors"])

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        from worker.analyses.emotions import write_emotions
        from worker.compute.layers import layer_spec
        from worker.data.feelings import read_feelings

        o = opts(ctx)
        _, report = write_emotions(ctx.store, ctx.model_name, layer_spec(ctx.loaded).name, merged,
                                   read_feelings(Path(o["feelings_path"])), o["method"], o["neurons"], run_id)
        return report
