"""The neuron card's modality profile: its best concepts × (pictures, rendered name, read-out of the text),
as z-scores across the concept set, with its multimodality score against the layer's null
(filled by `microscope worker modality`; definitions in worker/analyses/modality.py and docs/concepts.md)."""
from app import urls
from app.modality import MODALITIES, heat, layer_profiles
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    profiles = ctx.cache and layer_profiles(session, ctx.cache, ctx.layer)
    if not profiles or ctx.unit.index >= profiles.score.shape[0]:
        return None
    summary = profiles.meta.get("summary", {})
    score = float(profiles.score[ctx.unit.index])
    columns = [{"name": n, "title": t} for n, t in MODALITIES if n in profiles.arrays]
    rows = profiles.unit_table(ctx.unit.index)
    for row in rows:
        row["colours"] = {c["name"]: heat(row[c["name"]]) for c in columns}
    best = profiles.concepts[int(profiles.arrays["best"][ctx.unit.index])]
    peak = float(profiles.arrays["peak"][ctx.unit.index]) if "peak" in profiles.arrays else None
    return {"score": round(score, 3), "best": best, "peak": None if peak is None else round(peak, 2),
            "p99": summary.get("p99"),
            "multimodal": summary.get("p99") is not None and score > summary["p99"],
            "concept_set": profiles.meta.get("concept_set"), "n_concepts": len(profiles.concepts),
            "definition": profiles.meta.get("definition"), "columns": columns, "rows": rows,
            "summary_url": urls.modality(ctx.key.model, ctx.key.layer),
            "direction_url": urls.direction(ctx.key.model, ctx.key.layer, best)}


SECTION = Section("modality", "Modality profile", lambda _dialect: {}, lambda _values, _ctx: None,
                  "No modality profile yet: run `microscope worker modality ARCH --name MODEL` "
                  "(after `worker examples`).", load=load)
