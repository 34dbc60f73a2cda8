"""The featurevis stage: plain feature visualizations of every unit of the layers; faceted ones (probes
trained on the corpus's top-level folders) for the first `facet_units` units of the default layer."""
from pathlib import Path

from worker.pipeline.contract import BuildContext, Item, Stage


def fv_settings(ctx: BuildContext):
    from worker.analyses.featurevis import FeatureVisSettings
    from worker.compute.featurevis.render import RenderSettings

    o = ctx.options.get("featurevis", {})
    return FeatureVisSettings(RenderSettings(steps=o.get("steps", 512)), batch=o.get("batch", 8))


def facets(ctx: BuildContext) -> dict[str, Path]:
    """The facet folders of the corpus that the stage renders (option `facets`; none without a corpus)."""
    from worker.analyses.facets import facet_folders

    wanted = ctx.option("featurevis", "facets", ())
    folders = facet_folders(ctx.corpus) if ctx.corpus is not None and Path(ctx.corpus).is_dir() else {}
    return {f: folders[f] for f in wanted if f in folders}


class FeatureVis(Stage):
    name = "featurevis"
    produces = "feature visualizations per unit (plain; faceted for the first units when facets are asked)"
    distributed = True  # unit ranges on Ray workers (worker.pipeline.ray_executor)
    code = ("worker.analyses.featurevis", "worker.compute.featurevis.render", "worker.compute.featurevis.objectives",
            "worker.compute.featurevis.param", "worker.compute.featurevis.transform", "worker.analyses.facets")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.pipeline.contract import corpus_digest

        chosen = facets(ctx)
        return {**fv_settings(ctx).as_dict(), "layers": ctx.layer_names(), "facets": sorted(chosen),
                "facet_units": ctx.option("featurevis", "facet_units", 16),
                "facet_corpus": corpus_digest(ctx.corpus) if chosen else None}

    def items(self, ctx: BuildContext) -> list[Item]:
        """Unit ranges per layer (`unit_range` units, a multiple of the render batch): rendering is per
        unit, so the ranges run on any workers; each unit is written as it finishes (resumable)."""
        from worker.compute.layers import layer_spec

        size = max(1, ctx.option("featurevis", "unit_range", 64))
        return [Item(f"{layer}:{a}", (layer, a, min(units, a + size)))
                for layer in ctx.layer_names() for units in [layer_spec(ctx.loaded, layer).n_units]
                for a in range(0, units, size)]

    def compute(self, ctx: BuildContext, item: Item) -> tuple[str, dict]:
        from store.writes import active_run
        from worker.analyses.featurevis import run_layer

        layer, start, stop = item.payload
        return layer, run_layer(ctx.store, ctx.loaded, ctx.model_name, layer, range(start, stop), fv_settings(ctx),
                                run_id=active_run(self.name), progress=ctx.progress)

    def merge(self, ctx: BuildContext, parts: list) -> dict[str, dict]:
        """Per layer, the unit ranges' reports summed (seconds per neuron over the rendered ones)."""
        out: dict[str, dict] = {}
        for layer, got in parts:
            into = out.setdefault(layer, {"units": 0, "rendered": 0, "skipped": 0, "images": 0, "seconds": 0.0,
                                          "kinds": got["kinds"]})
            for key in ("units", "rendered", "skipped", "images", "seconds"):
                into[key] += got[key]
        for into in out.values():
            into["seconds"] = round(into["seconds"], 3)
            into["seconds_per_neuron"] = round(into["seconds"] / into["rendered"], 3) if into["rendered"] else None
        return out

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        report = {"layers": merged}
        chosen = facets(ctx)
        if chosen:
            report["facets"] = self.render_facets(ctx, chosen, run_id)
        report["units"] = sum(r["units"] for r in report["layers"].values())
        return report

    def render_facets(self, ctx: BuildContext, chosen: dict[str, Path], run_id: int) -> dict:
        from worker.analyses.facets import ensure_probes, facet_folders
        from worker.analyses.featurevis import run_layer
        from worker.compute.layers import catalogue, layer_spec

        layer = layer_spec(ctx.loaded).name
        names = [s.name for s in catalogue(ctx.loaded)]
        probes, probe_report = ensure_probes(ctx.store, ctx.loaded, ctx.model_name, names[names.index(layer) - 1],
                                             facet_folders(ctx.corpus), run_id=run_id)
        rendered = run_layer(ctx.store, ctx.loaded, ctx.model_name, layer,
                             range(ctx.option("featurevis", "facet_units", 16)), fv_settings(ctx),
                             {f: probes[f] for f in chosen}, run_id=run_id, progress=ctx.progress)
        return {"probes": probe_report, **rendered}
