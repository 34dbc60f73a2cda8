"""Region report: per neuron, the fraction of its top-5 rendered words that are geographic.

The paper calls a neuron a region neuron when all of its top-5 words are geographic (~4% of RN50x4's
units). Geographic = a country, city, US state or continent name, a demonym or a currency name
(`worker.places.geographic_words`). The report is an Artifact row "regions" per layer; the web app's
region page lists the units above a chosen fraction.
"""
from sqlalchemy import select

from app.db import Unit, Word, WordScore
from worker.places import geographic_words
from worker.store import Store
from worker.words import layer_units, put_artifact

STAGE = "regions"
TOP_K = 5
CRITERION = ("A unit's geographic fraction is the share of its top-5 rendered words that name a place, "
             "a demonym or a currency; the paper's region neurons have all five.")


def top_words(store: Store, model_name: str, layer: str, k: int = TOP_K) -> dict[int, list[str]]:
    """{unit index: its top-k words, best first} from the stored word scores."""
    with store.sessions() as session:
        _, la, _ = layer_units(session, model_name, layer)
        rows = session.execute(
            select(Unit.index, Word.text).join(WordScore, WordScore.unit_id == Unit.id)
            .join(Word, Word.id == WordScore.word_id)
            .where(Unit.layer_id == la.id, WordScore.sign == "top", WordScore.rank < k)
            .order_by(Unit.index, WordScore.rank)
        ).all()
    out: dict[int, list[str]] = {}
    for index, text in rows:
        out.setdefault(index, []).append(text)
    return out


def region_report(tops: dict[int, list[str]], geographic: frozenset[str]) -> list[dict]:
    """[{unit, fraction, top5, geographic}] for units with at least one geographic top word."""
    out = []
    for unit, words in sorted(tops.items()):
        geo = [w for w in words if w in geographic]
        if geo:
            out.append({"unit": unit, "fraction": len(geo) / len(words), "top5": words, "geographic": geo})
    return out


def run_regions(store: Store, model_name: str, layer: str) -> dict:
    """The regions stage: needs the words stage's scores for the layer; cheap, so it always recomputes."""
    from worker.store import recorded_run

    geographic, sources = geographic_words()
    with recorded_run(store, STAGE, model_name, {"stage": STAGE, "top_k": TOP_K, "n_geographic": len(geographic)},
                      layer=layer) as report:
        tops = top_words(store, model_name, layer)
        if not tops:
            raise ValueError(f"no rendered-word scores for {model_name} {layer}: run `microscope worker words` first")
        units = region_report(tops, geographic)
        all_geo = sum(1 for u in units if u["fraction"] == 1.0)
        put_artifact(store, model_name, layer, "regions", "", {
            "criterion": CRITERION, "top_k": TOP_K, "sources": list(sources), "n_scored": len(tops),
            "n_all_geographic": all_geo, "units": units}, report["run_id"])
        report.update(units_scored=len(tops), units_with_geography=len(units), units_all_geographic=all_geo)
    return report


def demo_stage(ctx) -> dict:
    """`worker.demo.build` stage: the region report for the demo model's default layer (needs the words stage)."""
    from worker.demo.build import done_before
    from worker.layers import layer_spec

    if done_before(ctx, STAGE, after="words"):  # a second `microscope demo` writes nothing
        return {"skipped": "done before"}
    return run_regions(ctx.store, ctx.model_name, layer_spec(ctx.loaded).name)
