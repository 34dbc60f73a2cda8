"""The featurevis stage of the demo build: small enough for the demo model's penultimate layer on 2 CPU cores
in a few minutes, resumable like the CLI (a rebuild renders only what is missing)."""
from pathlib import Path

from worker.featurevis.facets import ensure_probes, facet_folders
from worker.featurevis.render import RenderSettings
from worker.featurevis.stage import FeatureVisSettings, run_layer
from worker.layers import catalogue, layer_spec
from worker.models import LoadedModel
from worker.store import Store, recorded_run

# plain images for every unit; facet images for the first FACET_UNITS units (rendering is the cost, the
# probes are cheap and are trained for every corpus folder so each facet is told from all the others)
SETTINGS = FeatureVisSettings(RenderSettings(steps=32), batch=32)
FACETS = ("faces", "text", "logos", "flags")
FACET_UNITS = 16


def demo_featurevis(store: Store, loaded: LoadedModel, model_name: str, corpus: Path | None = None,
                    progress: bool = True) -> dict:
    """Plain feature visualizations of the default layer, and faceted ones from the demo corpus folders."""
    spec = layer_spec(loaded)
    with recorded_run(store, "featurevis", model_name, {**SETTINGS.as_dict(), "demo": True},
                      layer=spec.name) as report:
        report["plain"] = run_layer(store, loaded, model_name, spec.name, None, SETTINGS, run_id=report["run_id"],
                                    progress=progress)
        folders = facet_folders(corpus) if corpus is not None and Path(corpus).is_dir() else {}
        chosen = [f for f in FACETS if f in folders]
        if chosen:
            names = [s.name for s in catalogue(loaded)]
            lower = names[names.index(spec.name) - 1]
            probes, report["probes"] = ensure_probes(store, loaded, model_name, lower, folders,
                                                     run_id=report["run_id"])
            report["facets"] = run_layer(store, loaded, model_name, spec.name, range(FACET_UNITS), SETTINGS,
                                         {f: probes[f] for f in chosen}, run_id=report["run_id"], progress=progress)
    return report


def demo_stage(ctx) -> dict:
    """The demo build's stage (`worker.demo.build.STAGES`): ctx is its DemoContext."""
    from worker.demo.build import done_before

    if done_before(ctx, "featurevis"):  # an interrupted run is not done: the next build resumes it
        return {"skipped": "done before"}
    report = demo_featurevis(ctx.store, ctx.loaded, ctx.model_name, ctx.corpus)
    rendered = report["plain"]["rendered"] + report.get("facets", {}).get("rendered", 0)
    out = {"rendered": rendered, "probes": report.get("probes", {})}
    return out if rendered else {**out, "skipped": "done before"}
