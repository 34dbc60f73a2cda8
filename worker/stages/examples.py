"""The examples stage: top and most-negative dataset examples with heatmaps, statistics and samples."""
from worker.stage import BuildContext, Item, Stage


def options(ctx: BuildContext):
    from worker.examples import ExampleOptions

    return ExampleOptions(**{"progress": ctx.progress, **ctx.options.get("examples", {})})


class Examples(Stage):
    name = "examples"
    produces = "top-K and most-negative-K dataset examples with heatmaps, activation statistics and samples"
    code = ("worker.examples", "worker.corpus", "worker.topk", "worker.stats", "worker.images")
    reads_corpus = True

    def applies(self, ctx: BuildContext) -> str | None:
        return None if ctx.corpus is not None else "no --corpus given"

    def settings(self, ctx: BuildContext) -> dict:
        opts = options(ctx)
        return {"layers": ctx.layer_names(), "k": opts.k, "reduce": opts.reduce, "samples": opts.samples}

    def compute(self, ctx: BuildContext, item: Item) -> None:
        """The image stream, its checkpoints and the write are one call today (`run_examples`); the corpus
        shards (`worker.corpus.Shard`, merged by `merged_shards`) are the items a distributed executor
        will split it into."""

    def write(self, ctx: BuildContext, merged, run_id: int) -> dict:
        from worker.examples import run_examples

        return run_examples(ctx.store, ctx.loaded, ctx.model_name, ctx.corpus, ctx.layer_names(), options(ctx))
