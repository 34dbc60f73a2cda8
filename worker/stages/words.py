"""The words stage: every unit's response to a word list drawn as images. Items are chunks of words per
layer, each checkpointed in the cache (a killed build resumes at the first chunk it had not finished)."""
import numpy as np

from worker.pipeline.contract import BuildContext, Item, Stage, settings_hash

CHUNK = 512


def stage_words(ctx: BuildContext) -> list[str]:
    from worker.data.word_lists import DEFAULT, word_list

    return word_list(ctx.option("words", "list", DEFAULT), ctx.option("words", "n", 10_000))


def chunk(ctx: BuildContext) -> int:
    """Words per item (a checkpoint each): speed and resumption only, so not a setting."""
    return ctx.option("words", "chunk_size", CHUNK)


def plan(ctx: BuildContext):
    from worker.compute.text_scores import default_plan

    return ctx.option("words", "plan") or default_plan(ctx.loaded)


class Words(Stage):
    name = "words"
    produces = "top and most negative rendered words per unit; the words x units matrices"
    distributed = True  # items on Ray workers (worker.pipeline.ray_executor)
    code = ("worker.analyses.words", "worker.compute.text_scores", "worker.compute.render_text",
            "worker.analyses.resumable", "worker.data.word_lists")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.words import BOTTOM, TOP
        from worker.compute.text_scores import REDUCTION
        from worker.data.word_lists import DEFAULT

        words = stage_words(ctx)
        return {"layers": ctx.layer_names(), "list": ctx.option("words", "list", DEFAULT), "n": len(words),
                "texts": settings_hash({"words": words}), "plan": plan(ctx).describe(), "reduction": REDUCTION,
                "top": TOP, "bottom": BOTTOM}

    def items(self, ctx: BuildContext) -> list[Item]:
        from worker.analyses.words import words_job, words_settings

        words, out = stage_words(ctx), []
        for layer in ctx.layer_names():
            job = words_job(ctx.model_name, layer, settings_hash(words_settings(ctx.loaded, layer, words, plan(ctx))))
            starts = range(0, len(words), chunk(ctx))
            out += [Item(f"{layer}:{i}", (layer, i, start, job)) for i, start in enumerate(starts)]
        return out

    def compute(self, ctx: BuildContext, item: Item) -> tuple[str, np.ndarray, np.ndarray, bool]:
        """(layer, pre, post, resumed): one chunk's scores, from its checkpoint when a killed run left one."""
        from worker.analyses.resumable import Checkpoints
        from worker.compute.text_scores import channels_last, layer_reader, score_texts

        layer, i, start, job = item.payload
        checkpoints = Checkpoints(ctx.store, f"work/{job}")
        done = checkpoints.load(i)
        if done is not None:
            return (layer, *done, True)
        loaded = ctx.loaded
        with channels_last(loaded):
            done = score_texts(layer_reader(loaded, layer), stage_words(ctx)[start:start + chunk(ctx)], plan(ctx),
                               loaded.mean, loaded.std, ctx.option("words", "batch_size", 256), loaded.device)
        checkpoints.save(i, *done)
        return (layer, *done, False)

    def merge(self, ctx: BuildContext, parts: list) -> dict:
        """{layer: (pre, post)} in word order, and "resumed": how many chunks came from checkpoints."""
        out: dict = {"resumed": sum(p[3] for p in parts), "chunks": len(parts), "layers": {}}
        for layer in dict.fromkeys(p[0] for p in parts):
            mine = [p for p in parts if p[0] == layer]
            out["layers"][layer] = (np.concatenate([p[1] for p in mine]), np.concatenate([p[2] for p in mine]))
        return out

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        from worker.analyses.words import words_settings, write_words

        words = stage_words(ctx)
        layers = {layer: write_words(ctx.store, ctx.model_name, layer, words, pre, post,
                                     words_settings(ctx.loaded, layer, words, plan(ctx)), run_id)
                  for layer, (pre, post) in merged["layers"].items()}
        return {"layers": layers, "words": len(words), "units": sum(r["units"] for r in layers.values()),
                "chunks": merged["chunks"], "chunks_resumed": merged["resumed"]}
