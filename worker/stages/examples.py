"""The examples stage: top and most-negative dataset examples with heatmaps, statistics and samples.

Items are listing ranges of the corpus (`worker.analyses.example_parts`): each range's state goes to a
partial file (JPEGs decoded by PIL in the loader workers, or on the model's device with `jpeg_decode`
"device": part of the fingerprint, as the decoders round differently); the merge sums the counts; the
write is split by unit range (`write_items` / `write_item`), which a distributed executor runs on its
workers and the serial one in turn."""
from worker.pipeline.contract import BuildContext, Item, Stage, fingerprint


def options(ctx: BuildContext):
    from worker.analyses.examples import ExampleOptions

    given = {k: v for k, v in ctx.options.get("examples", {}).items() if k not in ("range_entries", "write_units")}
    return ExampleOptions(**{"progress": ctx.progress, "precision": ctx.loaded.precision, **given})


def range_entries(ctx: BuildContext) -> int | None:
    """Entries per listing range (None: `worker.analyses.example_parts.plan_ranges` picks from the corpus size)."""
    return ctx.option("examples", "range_entries")


def signal_of(ctx: BuildContext) -> dict:
    """Which value ranks the examples (`worker.analyses.examples.signal_kind`, and in words): run settings and
    report."""
    from worker.analyses.examples import signal_kind
    from worker.compute.layers import signal_description

    return {"signal": signal_kind(ctx.loaded), "signal_text": signal_description(ctx.loaded)}


def matrix_part(ctx: BuildContext, fp: str, piece):
    """The range's (unopened) part of each layer's activation matrix."""
    from pathlib import Path

    from worker.analyses.example_parts import range_sink
    from worker.compute.layers import layer_spec

    units = {n: layer_spec(ctx.loaded, n).n_units for n in ctx.layer_names()}
    meta = {"model": ctx.model_name, "corpus": str(Path(ctx.corpus).expanduser().resolve()),
            "reduce": options(ctx).reduce, "signal": signal_of(ctx)["signal"],
            "layout": "rows x units, row-major, float16; rows in the range's image order, ranges in order"}
    return range_sink(ctx.data_dir, ctx.model_name, units, fp, piece, meta)


class Examples(Stage):
    name = "examples"
    produces = "top-K and most-negative-K dataset examples with heatmaps, activation statistics and samples"
    distributed = True  # items on Ray workers (worker.pipeline.ray_executor)
    code = ("worker.analyses.examples", "worker.analyses.example_parts", "worker.analyses.activations",
            "worker.compute.corpus", "worker.compute.topk", "worker.compute.stats", "worker.analyses.images")
    reads_corpus = True

    def applies(self, ctx: BuildContext) -> str | None:
        return None if ctx.corpus is not None else "no --corpus given"

    def settings(self, ctx: BuildContext) -> dict:
        opts = options(ctx)
        return {"layers": ctx.layer_names(), "k": opts.k, "reduce": opts.reduce, "samples": opts.samples,
                "batch_size": opts.batch_size, "range_entries": range_entries(ctx), "precision": opts.precision,
                "jpeg_decode": opts.jpeg_decode, **signal_of(ctx)}

    def items(self, ctx: BuildContext) -> list[Item]:
        """One item per listing range; the payload carries the partials' folder name (the fingerprint)."""
        from worker.analyses.example_parts import plan_ranges

        options(ctx).check()
        fp = fingerprint(self, ctx, {})[0]
        return [Item(r.key, (fp, r)) for r in plan_ranges(ctx.corpus, range_entries(ctx))]

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        from worker.analyses.example_parts import compute_partial
        from worker.compute import partials

        fp, piece = item.payload
        return compute_partial(ctx.loaded, ctx.layer_names(), piece, options(ctx),
                               partials.path_of(ctx.data_dir, fp, item.key), matrix_part(ctx, fp, piece))

    def merge(self, ctx: BuildContext, parts: list):
        from worker.analyses.example_parts import make_plan
        from worker.compute.layers import layer_spec

        items = self.items(ctx)
        fp = items[0].payload[0] if items else fingerprint(self, ctx, {})[0]
        units = {n: layer_spec(ctx.loaded, n).n_units for n in ctx.layer_names()}
        return make_plan(fp, [i.payload[1] for i in items], parts, units)

    def write_items(self, ctx: BuildContext, plan) -> list[Item]:
        from worker.analyses.example_parts import WRITE_UNITS, write_pieces

        size = int(ctx.option("examples", "write_units", WRITE_UNITS))
        return [Item(f"{layer}:{a}-{b}", (layer, a, b)) for layer, a, b in write_pieces(plan, size)]

    def write_item(self, ctx: BuildContext, plan, item: Item, run_id: int) -> dict:
        from worker.analyses.example_parts import write_piece

        return write_piece(ctx.store, ctx.model_name, plan, item.payload, options(ctx), run_id)

    def finish(self, ctx: BuildContext, plan, pieces: list[dict], run_id: int) -> dict:
        """The run's report; each layer's activation matrix (one part per range) is registered, and the
        partials are dropped once every unit is in the store."""
        from worker.analyses.activations import register_matrices
        from worker.analyses.example_parts import matrix_folders, report_of
        from worker.compute import partials

        entries = sum(len(r.entries) for r in plan.ranges)
        if plan.ranges:
            register_matrices(ctx.store, ctx.model_name, matrix_folders(ctx.data_dir, plan, ctx.model_name), run_id)
        partials.drop(ctx.data_dir, plan.fingerprint)
        return report_of(plan, pieces, entries, options(ctx)) | signal_of(ctx)

    def write(self, ctx: BuildContext, plan, run_id: int) -> dict:
        pieces = [self.write_item(ctx, plan, item, run_id) for item in self.write_items(ctx, plan)]
        return self.finish(ctx, plan, pieces, run_id)
