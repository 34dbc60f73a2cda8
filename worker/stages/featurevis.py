"""The featurevis stage: plain feature visualizations (and diversity strips) of the units of the layers,
then faceted ones: in a build, probes trained on the corpus's top-level folders (`facets`) for the first
`facet_units` units of the default layer; from `microscope worker featurevis --facets`, the facets it names
(`facet_specs`) for the units asked (`units`, default all).

Options (all optional): steps, size, lr, precision (the render), seed, batch, diversity, objective,
units, unit_range, channels_last; facets, facet_units; facet_specs, generic, facet_layer, retrain_probes."""
from pathlib import Path

from worker.pipeline.contract import BuildContext, Item, Stage

RENDER_KEYS = ("steps", "size", "lr", "precision")
SETTINGS_KEYS = ("seed", "batch", "diversity", "objective")


def option(ctx: BuildContext, key: str, default=None):
    return ctx.option("featurevis", key, default)


def fv_settings(ctx: BuildContext):
    from worker.analyses.featurevis import FeatureVisSettings
    from worker.compute.featurevis.render import RenderSettings

    o = ctx.options.get("featurevis", {})
    return FeatureVisSettings(RenderSettings(**{k: o[k] for k in RENDER_KEYS if k in o}),
                              **{k: o[k] for k in SETTINGS_KEYS if k in o})


def facets(ctx: BuildContext) -> dict[str, Path]:
    """The facet folders of the corpus that the stage renders (option `facets`; none without a corpus)."""
    from worker.analyses.facets import facet_folders

    wanted = option(ctx, "facets", ())
    folders = facet_folders(ctx.corpus) if ctx.corpus is not None and Path(ctx.corpus).is_dir() else {}
    return {f: folders[f] for f in wanted if f in folders}


def units_of(ctx: BuildContext, layer: str) -> list[int]:
    """The units asked for (option `units`, checked against the layer), else all of them."""
    from worker.analyses.featurevis import check_units
    from worker.compute.layers import layer_spec

    return check_units(option(ctx, "units"), layer_spec(ctx.loaded, layer).n_units, layer)


def asked_facets(ctx: BuildContext) -> dict | None:
    """What the `facet_specs` stand for, for the fingerprint: the probes' layer, each folder's contents,
    each stored probe's digest (an unknown name is a ValueError before anything runs)."""
    from worker.analyses.facets import facet_layer_for, parse_facet_specs, stored_probes
    from worker.pipeline.contract import corpus_digest

    specs = option(ctx, "facet_specs", ())
    if not specs:
        return None
    lower = facet_layer_for(ctx.loaded, ctx.layer_names()[0], option(ctx, "facet_layer"))
    generic = option(ctx, "generic")
    folders, named = parse_facet_specs(specs, generic)
    return {"layer": lower, "folders": {f: corpus_digest(p) for f, p in folders.items()},
            "stored": {n: p.digest for n, p in stored_probes(ctx.store, ctx.model_name, lower, named).items()},
            "generic": corpus_digest(generic)}


class FeatureVis(Stage):
    name = "featurevis"
    produces = "feature visualizations per unit (plain; faceted for the first units when facets are asked)"
    distributed = True  # unit ranges on Ray workers (worker.pipeline.ray_executor)
    code = ("worker.analyses.featurevis", "worker.compute.featurevis.render", "worker.compute.featurevis.objectives",
            "worker.compute.featurevis.param", "worker.compute.featurevis.transform", "worker.analyses.facets")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.pipeline.contract import corpus_digest

        chosen = facets(ctx)
        out = {**fv_settings(ctx).as_dict(), "layers": ctx.layer_names(), "facets": sorted(chosen),
               "facet_units": option(ctx, "facet_units", 16),
               "facet_corpus": corpus_digest(ctx.corpus) if chosen else None}
        if option(ctx, "units") is not None:  # only when asked: a build's fingerprint stays as it was
            out["units"] = {layer: units_of(ctx, layer) for layer in ctx.layer_names()}
        if option(ctx, "facet_specs"):
            out["asked_facets"] = asked_facets(ctx)
        return out

    def items(self, ctx: BuildContext) -> list[Item]:
        """Ranges of the units asked per layer (`unit_range` units, rounded up to a multiple of the render
        batch): rendering is per unit, so the ranges run on any workers; each unit is written as it
        finishes (resumable)."""
        batch = fv_settings(ctx).batch
        size = -(-max(1, option(ctx, "unit_range", 64)) // batch) * batch
        return [Item(f"{layer}:{units[a]}", (layer, units[a:a + size]))
                for layer in ctx.layer_names() for units in [units_of(ctx, layer)]
                for a in range(0, len(units), size)]

    def compute(self, ctx: BuildContext, item: Item) -> tuple[str, dict]:
        """One unit range rendered; each unit's images are written as it finishes, which is what lets a
        killed run resume (a unit with its images under the same settings hash is skipped)."""
        from store.writes import active_run
        from worker.analyses.featurevis import run_layer

        layer, units = item.payload
        return layer, run_layer(ctx.store, ctx.loaded, ctx.model_name, layer, units, fv_settings(ctx),
                                run_id=active_run(self.name), progress=ctx.progress,
                                channels_last=option(ctx, "channels_last", True))

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
        """The faceted renders: they need their probes, which are trained (and stored) here first."""
        report = {"layers": merged}
        plan = self.facet_plan(ctx, run_id)
        if plan is not None:
            report["facets"] = self.render_facets(ctx, *plan, run_id)
        report["units"] = sum(r["units"] for r in report["layers"].values())
        return report

    def facet_plan(self, ctx: BuildContext, run_id: int) -> tuple | None:
        """(layer, units, probes, probe report) of the faceted renders, or None when none are asked."""
        from worker.analyses.facets import ensure_probes, facet_folders, facet_layer_for, resolve_facets
        from worker.compute.layers import layer_spec

        if option(ctx, "facet_specs"):
            layer = ctx.layer_names()[0]
            lower = facet_layer_for(ctx.loaded, layer, option(ctx, "facet_layer"))
            generic = option(ctx, "generic")
            return (layer, option(ctx, "units"), *resolve_facets(ctx.store, ctx.loaded, ctx.model_name, lower,
                                                                 option(ctx, "facet_specs"), generic,
                                                                 option(ctx, "retrain_probes", False), run_id))
        chosen = facets(ctx)
        if not chosen:
            return None
        layer = layer_spec(ctx.loaded).name
        probes, probe_report = ensure_probes(ctx.store, ctx.loaded, ctx.model_name,
                                             facet_layer_for(ctx.loaded, layer, None), facet_folders(ctx.corpus),
                                             run_id=run_id)
        return layer, range(option(ctx, "facet_units", 16)), {f: probes[f] for f in chosen}, probe_report

    def render_facets(self, ctx: BuildContext, layer: str, units, probes: dict, probe_report: dict,
                      run_id: int) -> dict:
        from worker.analyses.featurevis import run_layer

        rendered = run_layer(ctx.store, ctx.loaded, ctx.model_name, layer, units, fv_settings(ctx), probes,
                             run_id=run_id, progress=ctx.progress, channels_last=option(ctx, "channels_last", True))
        return {"layer": layer, "probes": probe_report, **rendered}
