"""Region report: per neuron, the fraction of its top-5 rendered words that are geographic.

The paper calls a neuron a region neuron when all of its top-5 words are geographic (~4% of RN50x4's
units). Geographic = a country, city, US state or continent name, a demonym or a currency name
(`worker.data.places.geographic_words`). The report is an Artifact row "regions" per layer; the web app's
region page lists the units above a chosen fraction.
"""
from sqlalchemy import select

from store.schema import Unit, Word, WordScore
from store.writes import Store
from worker.analyses.artifacts import layer_units, put_artifact
from worker.data.places import geographic_words

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


def regions_settings() -> dict:
    geographic, _ = geographic_words()
    return {"stage": STAGE, "top_k": TOP_K, "n_geographic": len(geographic)}


def compute_regions(store: Store, model_name: str, layer: str) -> dict:
    """The layer's region report (the artifact's meta), from the stored word scores."""
    geographic, sources = geographic_words()
    tops = top_words(store, model_name, layer)
    if not tops:
        raise ValueError(f"no rendered-word scores for {model_name} {layer}: run `microscope worker words` first")
    units = region_report(tops, geographic)
    return {"criterion": CRITERION, "top_k": TOP_K, "sources": list(sources), "n_scored": len(tops),
            "n_all_geographic": sum(1 for u in units if u["fraction"] == 1.0), "units": units}


def write_regions(store: Store, model_name: str, layer: str, meta: dict, run_id: int | None) -> dict:
    put_artifact(store, model_name, layer, "regions", "", meta, run_id)
    return {"units_scored": meta["n_scored"], "units_with_geography": len(meta["units"]),
            "units_all_geographic": meta["n_all_geographic"]}


def run_regions(store: Store, model_name: str, layer: str) -> dict:
    """The regions stage for one layer, outside the pipeline (cheap, so it always recomputes)."""
    from store.writes import recorded_run

    with recorded_run(store, STAGE, model_name, regions_settings(), layer=layer) as report:
        report.update(write_regions(store, model_name, layer, compute_regions(store, model_name, layer),
                                    report["run_id"]))
    return report
