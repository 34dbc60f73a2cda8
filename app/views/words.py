"""Rendered words: a word's page, the image-based word embedding (neighbours, arithmetic), region neurons.

The word x unit matrices are files the worker's words stage wrote (Artifact rows named "words");
they are read with numpy and kept in memory per process (`app.embeddings.load_space`).
"""
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from app import urls
from app.deps import CacheDep, SessionDep
from app.embeddings import EmbeddingError, WordSpace, load_space, suggestion
from app.lookup import NotFound, get_layer
from app.web import error_page, respond
from store.keys import UnitKey
from store.schema import Artifact, Model, Word

router = APIRouter()

K = Annotated[int, Query(ge=1, le=100, description="how many results")]
Mask = Annotated[bool, Query(description="drop typographic units (shared spelling fragments) before comparing")]
WORD_PAGE_UNITS = 12


def word_artifacts(session, model: str | None = None, layer: str | None = None) -> list[tuple[str, str, Artifact]]:
    """(model name, layer name, artifact) of every stored word matrix, optionally of one layer."""
    q = (select(Model.name, Artifact).join(Model, Artifact.model_id == Model.id)
         .where(Artifact.name == "words").order_by(Model.name, Artifact.layer))
    if model is not None:
        q = q.where(Model.name == model, Artifact.layer == layer)
    return [(m, a.layer, a) for m, a in session.execute(q)]


def space_of(cache, artifact: Artifact) -> WordSpace | None:
    paths = artifact.meta.get("paths", {})
    scores, words = cache.resolve(paths.get("post", "")), cache.resolve(paths.get("texts", ""))
    if scores is None or words is None:
        return None
    return load_space(scores, words)


def layer_space(session, cache, model: str, layer: str) -> WordSpace:
    """The layer's word space, or NotFound naming the layers that have one."""
    la = get_layer(session, model, layer)
    found = word_artifacts(session, model, layer)
    space = space_of(cache, found[0][2]) if found else None
    if space is None:
        have = word_artifacts(session)
        raise NotFound(f"No rendered-word scores for {la.model.name} {la.name} yet: run "
                       f"`microscope worker words {la.model.name} --layer {la.name}`.",
                       [(f"{m} {lay}", urls.embeddings(m, lay)) for m, lay, _ in have])
    return space


def embedding_info(model: str, layer: str, space: WordSpace) -> dict:
    return {"model": model, "layer": layer, "n_words": len(space.words), "n_units": space.n_units,
            "n_typographic": len(space.typographic), "url": urls.embeddings(model, layer),
            "regions_url": urls.regions(model, layer)}


@router.get("/words", name="words_index")
def words_index(request: Request, session: SessionDep, cache: CacheDep, word: str | None = None):
    """Every layer with rendered-word scores; `?word=` jumps to that word's page."""
    if word and word.strip():
        return RedirectResponse(urls.word(word.strip().lower()), status_code=303)
    layers = []
    for m, la, art in word_artifacts(session):
        space = space_of(cache, art)
        if space is not None:
            layers.append(embedding_info(m, la, space))
    return respond(request, "words.html", {"layers": layers})


def top_units(space: WordSpace, row: int, k: int) -> list[tuple[int, float, float]]:
    """(unit, score, z) of the units this word drives most, in standard deviations over all words."""
    std = space.spread
    z = np.divide(space.vectors[row], std, out=np.zeros_like(std), where=std > 0)
    best = np.argsort(-z, kind="stable")[:k]
    return [(int(u), float(space.scores[row, u]), float(z[u])) for u in best]


@router.get("/words/{word}", name="word")
def word_page(request: Request, session: SessionDep, cache: CacheDep, word: str):
    """The neurons a rendered word drives most (per layer with scores), and its nearest words."""
    text = word.strip().lower()
    layers = []
    for m, la, art in word_artifacts(session):
        space = space_of(cache, art)
        if space is None or text not in space.index:
            continue
        row = space.index[text]
        layers.append({
            **embedding_info(m, la, space), "rank": row,
            "units": [{"unit": u, "score": s, "z": z, "url": urls.neuron(UnitKey(m, la, u)),
                       "typographic": space.typographic.get(u)} for u, s, z in top_units(space, row, WORD_PAGE_UNITS)],
            "neighbours": space.neighbours(text, 10),
            "neighbours_url": urls.neighbours(m, la, text),
        })
    if not layers:
        raise NotFound(unknown_word_message(session, text), [("all rendered words", urls.words_index())])
    db_rank = session.scalar(select(Word.rank).where(Word.text == text))
    return respond(request, "word.html", {"word": text, "frequency_rank": db_rank, "layers": layers})


def unknown_word_message(session, text: str) -> str:
    words = session.scalars(select(Word.text).order_by(Word.rank)).all()
    if not words:
        return "No rendered words yet: run `microscope worker words MODEL`."
    return f"No rendered-word scores for {text!r} ({len(words)} words have them)" + suggestion(text, words)


def results_page(request: Request, model: str, layer: str, space: WordSpace, query: dict, result: dict):
    data = {**embedding_info(model, layer, space), "query": query, **result,
            "typographic_units": [{"unit": u, "fragment": f, "url": urls.neuron(UnitKey(model, layer, u))}
                                  for u, f in sorted(space.typographic.items())]}
    return respond(request, "embeddings.html", data)


@router.get("/embeddings/{model}/{layer}", name="embeddings")
def embeddings_page(request: Request, session: SessionDep, cache: CacheDep, model: str, layer: str,
                    word: str | None = None, expr: str | None = None, k: K = 10,
                    mask_typographic: Mask = False):
    """The layer's word embedding: forms for neighbours and arithmetic, and their answer when asked."""
    space = layer_space(session, cache, model, layer)
    query = {"word": word or "", "expr": expr or "", "k": k, "mask_typographic": mask_typographic}
    try:
        result = {}
        if word:
            result["neighbours"] = space.neighbours(word, k, mask_typographic)
        if expr:
            terms, found = space.arithmetic(expr, k, mask_typographic)
            result["terms"] = [{"sign": "+" if s > 0 else "-", "word": w} for s, w in terms]
            result["arithmetic"] = found
    except EmbeddingError as e:
        back = [{"text": "embedding page", "url": urls.embeddings(model, layer)}]
        return error_page(request, 422, str(e), links=back)
    return results_page(request, model, layer, space, query, result)


@router.get("/embeddings/{model}/{layer}/neighbours", name="neighbours")
def neighbours(request: Request, session: SessionDep, cache: CacheDep, model: str, layer: str,
               word: Annotated[str, Query(min_length=1, max_length=128)], k: K = 10, mask_typographic: Mask = False):
    """The k words whose image-based embedding is closest (cosine) to `word`'s."""
    space = layer_space(session, cache, model, layer)
    try:
        found = space.neighbours(word, k, mask_typographic)
    except EmbeddingError as e:
        return error_page(request, 422, str(e))
    query = {"word": word, "expr": "", "k": k, "mask_typographic": mask_typographic}
    return results_page(request, model, layer, space, query, {"neighbours": found})


@router.get("/embeddings/{model}/{layer}/arithmetic", name="arithmetic")
def arithmetic(request: Request, session: SessionDep, cache: CacheDep, model: str, layer: str,
               expr: Annotated[str, Query(min_length=1, max_length=500)], k: K = 10, mask_typographic: Mask = False):
    """Words nearest to a sum of word vectors, e.g. `king - man + woman` (the input words excluded)."""
    space = layer_space(session, cache, model, layer)
    try:
        terms, found = space.arithmetic(expr, k, mask_typographic)
    except EmbeddingError as e:
        return error_page(request, 422, str(e))
    query = {"word": "", "expr": expr, "k": k, "mask_typographic": mask_typographic}
    result = {"terms": [{"sign": "+" if s > 0 else "-", "word": w} for s, w in terms], "arithmetic": found}
    return results_page(request, model, layer, space, query, result)


@router.get("/regions/{model}/{layer}", name="regions")
def regions_page(request: Request, session: SessionDep, model: str, layer: str,
                 min_fraction: Annotated[float, Query(ge=0, le=1)] = 0.6):
    """Likely region neurons: units most of whose top-5 rendered words are geographic."""
    la = get_layer(session, model, layer)
    art = session.scalar(select(Artifact).where(Artifact.model_id == la.model_id, Artifact.layer == la.name,
                                                Artifact.name == "regions"))
    if art is None:
        raise NotFound(f"No region report for {la.model.name} {la.name} yet: run "
                       f"`microscope worker regions {la.model.name} --layer {la.name}`.",
                       [(f"{la.name} grid", urls.layer(la.model.name, la.name))])
    units = [dict(u, url=urls.neuron(UnitKey(la.model.name, la.name, u["unit"])))
             for u in art.meta.get("units", []) if u["fraction"] >= min_fraction]
    units.sort(key=lambda u: (-u["fraction"], u["unit"]))
    data = {"model": la.model.name, "layer": la.name, "min_fraction": min_fraction, "units": units,
            "n_units": la.n_units, "n_scored": art.meta.get("n_scored", 0),
            "share": len(units) / la.n_units if la.n_units else 0.0,
            "criterion": art.meta.get("criterion", ""), "sources": art.meta.get("sources", [])}
    return respond(request, "regions.html", data)

