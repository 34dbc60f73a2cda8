"""Emotion composition pages: the feeling atlas with every word, and each word's few neurons."""
import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from sqlalchemy import select

from app import urls
from app.deps import CacheDep, SessionDep
from app.lookup import NotFound, get_model
from app.views.browse import labels_for, thumbs_for
from app.web import respond
from store.keys import UnitKey
from store.schema import Artifact, Layer, Model, Unit

router = APIRouter()
ARTIFACT = "emotions"
EMPTY = "No emotion composition yet: run `microscope worker emotions {model}`."


@lru_cache(maxsize=32)
def _read(path: Path, mtime_ns: int) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def composition(session, cache, model: Model) -> tuple[Artifact, dict] | None:
    """The model's stored emotion composition (the newest run's JSON), or None."""
    art = session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.name == ARTIFACT)
                         .order_by(Artifact.id.desc()))
    file = cache.resolve(art.path) if art else None
    if file is None:
        return None
    return art, _read(file, file.stat().st_mtime_ns)


def unit_cards(session, model: str, layer: str, rows: list[dict], value: str) -> list[dict]:
    """Neuron cards (link, thumbnail, label) for rows of {"unit", value}, keeping their order."""
    units = {index: uid for index, uid in session.execute(
        select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
        .where(Model.name == model, Layer.name == layer, Unit.index.in_([r["unit"] for r in rows])))}
    ids = list(units.values())
    thumbs, labels = thumbs_for(session, ids), labels_for(session, ids)
    out = []
    for r in rows:
        key, uid = UnitKey(model, layer, r["unit"]), units.get(r["unit"])
        label = labels.get(uid, {})
        out.append({"unit": r["unit"], "key": key.path, value: r[value], "url": urls.neuron(key),
                    "thumb": thumbs.get(uid), "label": label.get("text"), "label_auto": label.get("auto", False)})
    return out


def word_row(model: str, w: dict) -> dict:
    return {"word": w["word"], "group": w["group"], "url": urls.emotion(model, w["word"]),
            "quality": w["quality"], "code": w["code"], "cell": w["cell"]}


@router.get("/models/{model}/emotions", name="emotions")
def emotions_page(request: Request, session: SessionDep, cache: CacheDep, model: str):
    m = get_model(session, model)
    found = composition(session, cache, m)
    if found is None:
        return respond(request, "emotions.html", {"model": m.name, "empty": EMPTY.format(model=m.name),
                                                  "words": [], "groups": [], "factors": []})
    art, data = found
    groups: dict[str, list[dict]] = {}
    for w in data["words"]:
        groups.setdefault(w["group"], []).append(word_row(m.name, w))
    factors = [{**f, "units": unit_cards(session, m.name, art.layer, f["units"], "loading")} for f in data["factors"]]
    quality = [w["quality"] for w in data["words"]]
    return respond(request, "emotions.html", {
        "model": m.name, "layer": art.layer, "prompt": data["prompt"], "method": data["method"],
        "max_neurons": data["max_neurons"], "quality_name": data["quality_name"],
        "mean_quality": sum(quality) / len(quality) if quality else None,
        "atlas": urls.cache(data.get("atlas")), "factors": factors,
        "groups": [{"group": g, "words": ws} for g, ws in groups.items()],
        "words": [w["word"] for w in data["words"]], "empty": None})


@router.get("/models/{model}/emotions/{word}", name="emotion")
def emotion_page(request: Request, session: SessionDep, cache: CacheDep, model: str, word: str):
    m = get_model(session, model)
    found = composition(session, cache, m)
    if found is None:
        raise NotFound(f"Model {m.name} has no emotion composition yet: run `microscope worker emotions {m.name}`.",
                       [(m.name, urls.model(m.name))])
    art, data = found
    by_word = {w["word"].lower(): i for i, w in enumerate(data["words"])}
    if word.lower() not in by_word:
        have = [w["word"] for w in data["words"]]
        raise NotFound(f"No feeling word {word!r} for model {m.name}. Words: {', '.join(have)}.",
                       [("all feeling words", urls.emotions(m.name))])
    i = by_word[word.lower()]
    w = data["words"][i]
    code_units = {c["unit"] for c in w["code"]}
    shared = {u: [o["word"] for o in data["words"] if o is not w and u in {c["unit"] for c in o["code"]}]
              for u in code_units}
    code = unit_cards(session, m.name, art.layer, w["code"], "weight")
    for c in code:
        c["shared_with"] = [{"word": s, "url": urls.emotion(m.name, s)} for s in shared[c["unit"]]]
    words = data["words"]
    return respond(request, "emotion.html", {
        "model": m.name, "layer": art.layer, "word": w["word"], "group": w["group"],
        "prompt": data["prompt"].format(w["word"]), "method": data["method"],
        "quality_name": data["quality_name"], "quality": w["quality"], "nonzero": w.get("nonzero"),
        "code": code, "top": unit_cards(session, m.name, art.layer, w["top"], "attribution"),
        "factors": [{"index": f["index"], "colour": f["colour"], "share": s, "top_words": f["top_words"]}
                    for f, s in zip(data["factors"], w["factors"], strict=False)],
        "atlas": urls.cache(data.get("atlas")), "list_url": urls.emotions(m.name),
        "prev": urls.emotion(m.name, words[i - 1]["word"]) if i > 0 else None,
        "next": urls.emotion(m.name, words[i + 1]["word"]) if i + 1 < len(words) else None})
