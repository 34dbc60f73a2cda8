"""The neuron card's modality profile: its best concepts × (pictures, rendered name, read-out of the text),
as z-scores across the concept set, with its multimodality score against the layer's null
(filled by `microscope worker modality`; definitions in worker/analyses/modality.py and docs/concepts.md)."""
from sqlalchemy import select

from app import urls
from app.modality import ARTIFACT, MODALITIES, heat, load_profiles
from app.sections import Section, UnitContext
from app.sections.rows import LAYER, MODEL_ID, json_rows
from store.schema import Artifact


def columns(dialect: str) -> dict:
    """The layer's modality artifact (its files' paths and summary), as a column of the page's one statement."""
    art = select(Artifact.meta).where(Artifact.model_id == MODEL_ID, Artifact.layer == LAYER, Artifact.name == ARTIFACT)
    return {"artifact": json_rows(art, dialect)}


def build(values: dict, ctx: UnitContext):
    found = values["artifact"]
    profiles = ctx.cache and found and load_profiles(ctx.cache, found[0]["meta"])
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


SECTION = Section("modality", "Modality profile", columns, build,
                  "No modality profile yet: run `microscope worker modality ARCH --name MODEL` "
                  "(after `worker examples`).")
