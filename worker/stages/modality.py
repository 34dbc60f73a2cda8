"""The modality stage: per unit, its response over a concept set to pictures (the examples stage's activation
matrix), rendered names and the text read-out; multimodality against a permuted-labels null. One item per
layer: compute profiles and scores it (one scan of the matrix), write stores them."""
from worker.pipeline.contract import BuildContext, Item, LayerStage


def opt(ctx: BuildContext, key: str) -> int:
    """A count option of the stage (`microscope worker modality --min-images/--most/--permutations`)."""
    from worker.analyses.modality import MAX_CONCEPTS, MIN_IMAGES, PERMUTATIONS

    default = {"min_images": MIN_IMAGES, "most": MAX_CONCEPTS, "permutations": PERMUTATIONS}[key]
    return ctx.option("modality", key, default)


class Modality(LayerStage):
    name = "modality"
    needs = ("examples",)
    produces = "modality profiles and multimodality scores per unit (reads the examples stage's activation matrix)"
    code = ("worker.analyses.modality", "worker.analyses.activations", "worker.compute.image_text")
    reads_corpus = True

    def settings(self, ctx: BuildContext) -> dict:
        from worker.pipeline.contract import settings_hash

        return {"layers": ctx.layer_names(), "concept_set": ctx.option("modality", "concept_set", "auto"),
                "exclude": settings_hash({"paths": sorted(ctx.option("modality", "exclude", frozenset()))}),
                "captions": settings_hash({"captions": ctx.option("modality", "captions")}),
                **{key: opt(ctx, key) for key in ("min_images", "most", "permutations")}}

    def compute(self, ctx: BuildContext, item: Item) -> dict:
        """The layer's profile (pictures, rendered names, read-out) and scores (`compute_modality`)."""
        from worker.analyses.modality import compute_modality

        return compute_modality(ctx.store, ctx.loaded, ctx.model_name, item.payload,
                                concept_set=ctx.option("modality", "concept_set", "auto"),
                                exclude=frozenset(ctx.option("modality", "exclude", frozenset())),
                                captions=ctx.option("modality", "captions"), device=str(ctx.loaded.device),
                                **{key: opt(ctx, key) for key in ("min_images", "most", "permutations")})

    def write_layer(self, ctx: BuildContext, part: dict, run_id: int) -> dict:
        from worker.analyses.modality import write_modality

        return write_modality(ctx.store, ctx.model_name, part, run_id)
