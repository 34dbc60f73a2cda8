"""The featurevis stage: plain feature visualizations of every unit of the layers; faceted ones (probes
trained on the corpus's top-level folders) for the first `facet_units` units of the default layer."""
from pathlib import Path

from worker.stage import BuildContext, Item, Stage


def fv_settings(ctx: BuildContext):
    from worker.featurevis.render import RenderSettings
    from worker.featurevis.stage import FeatureVisSettings

    o = ctx.options.get("featurevis", {})
    return FeatureVisSettings(RenderSettings(steps=o.get("steps", 512)), batch=o.get("batch", 8))


def facets(ctx: BuildContext) -> dict[str, Path]:
    """The facet folders of the corpus that the stage renders (option `facets`; none without a corpus)."""
    from worker.featurevis.facets import facet_folders

    wanted = ctx.option("featurevis", "facets", ())
    folders = facet_folders(ctx.corpus) if ctx.corpus is not None and Path(ctx.corpus).is_dir() else {}
    return {f: folders[f] for f in wanted if f in folders}


class FeatureVis(Stage):
    name = "featurevis"
    produces = "feature visualizations per unit (plain; faceted for the first units when facets are asked)"
    code = ("worker.featurevis.stage", "worker.featurevis.render", "worker.featurevis.objectives",
            "worker.featurevis.param", "worker.featurevis.transform", "worker.featurevis.facets")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.stage import corpus_digest

        chosen = facets(ctx)
        return {**fv_settings(ctx).as_dict(), "layers": ctx.layer_names(), "facets": sorted(chosen),
                "facet_units": ctx.option("featurevis", "facet_units", 16),
                "facet_corpus": corpus_digest(ctx.corpus) if chosen else None}

    def compute(self, ctx: BuildContext, item: Item) -> None:
        """Rendering writes each unit as it finishes (`run_layer`), which is what makes it resumable; unit
        ranges are the items a distributed executor will split it into."""

    def write(self, ctx: BuildContext, merged, run_id: int) -> dict:
        from worker.featurevis.stage import run_layer

        settings, report = fv_settings(ctx), {"layers": {}}
        for layer in ctx.layer_names():
            report["layers"][layer] = run_layer(ctx.store, ctx.loaded, ctx.model_name, layer, None, settings,
                                                run_id=run_id, progress=ctx.progress)
        chosen = facets(ctx)
        if chosen:
            report["facets"] = self.render_facets(ctx, chosen, run_id)
        report["units"] = sum(r["units"] for r in report["layers"].values())
        return report

    def render_facets(self, ctx: BuildContext, chosen: dict[str, Path], run_id: int) -> dict:
        from worker.featurevis.facets import ensure_probes, facet_folders
        from worker.featurevis.stage import run_layer
        from worker.layers import catalogue, layer_spec

        layer = layer_spec(ctx.loaded).name
        names = [s.name for s in catalogue(ctx.loaded)]
        probes, probe_report = ensure_probes(ctx.store, ctx.loaded, ctx.model_name, names[names.index(layer) - 1],
                                             facet_folders(ctx.corpus), run_id=run_id)
        rendered = run_layer(ctx.store, ctx.loaded, ctx.model_name, layer,
                             range(ctx.option("featurevis", "facet_units", 16)), fv_settings(ctx),
                             {f: probes[f] for f in chosen}, run_id=run_id, progress=ctx.progress)
        return {"probes": probe_report, **rendered}
