"""/search?q=…: neurons whose labels, families or top words match, fused with the neurons the text is
attributed to (for models with a read-out whose text tower this server can load). Ranked, paginated,
and the URL is the whole state, so it can be shared."""
from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from app import urls
from app.deps import CacheDep, SessionDep, SettingsDep
from app.lookup import NotFound, get_model
from app.probe import ProbeBusy, ProbeUnavailable, readout_artifact
from app.search import ATTRIBUTION_LIMIT, BadQuery, check_query, describe, excerpt, full_text, fuse, tokens, unit_ids
from app.views.browse import labels_for, thumbs_for
from app.views.probe import attribution_scores, text_models
from app.web import error_page, respond
from store.keys import UnitKey

router = APIRouter()

PAGE_SIZE = 20
SEARCH_WAIT_S = 3.0  # a search waits this long for a text tower to load, then answers from full text alone


def attribution_rankings(request: Request, session: Session, cache, q: str, model: str | None):
    """Per model with a read-out: its units ranked by attribution to `q` (positive only), and notes on
    models whose text tower is loading or unavailable."""
    rankings, notes = [], []
    for m in text_models(session):
        if model is not None and m.name != model:
            continue
        art = readout_artifact(session, m)
        try:
            scores = attribution_scores(request, session, cache, m, art, q, wait_s=SEARCH_WAIT_S)
        except ProbeBusy:
            notes.append(f"The text tower of {m.name} is still loading: search again in a few seconds to "
                         "include the neurons this text is attributed to.")
            continue
        except ProbeUnavailable as e:
            notes.append(f"No text attribution for {m.name}: {e.message}")
            continue
        top = [int(i) for i in scores.argsort()[::-1][:ATTRIBUTION_LIMIT] if scores[i] > 0]
        ids = unit_ids(session, m.name, art.layer, top)
        rankings.append([(ids[u], float(scores[u])) for u in top if u in ids])
    return rankings, notes


def result_cards(session: Session, hits, words: list[str]) -> list[dict]:
    ids = [h.unit_id for h in hits]
    info, thumbs, labels = describe(session, ids), thumbs_for(session, ids), labels_for(session, ids)
    cards = []
    for h in hits:
        d = info[h.unit_id]
        key = UnitKey(d["model"], d["layer"], d["unit"])
        label = labels.get(h.unit_id, {})
        cards.append({"key": key.path, "url": urls.neuron(key), "thumb": thumbs.get(h.unit_id),
                      "label": label.get("text"), "label_auto": label.get("auto", False),
                      "excerpt": excerpt(d["document"], words), "score": round(h.score, 6), "sources": h.sources,
                      "text_rank": h.text_rank, "attribution": None if h.attribution is None else
                      round(h.attribution, 5)})
    return cards


@router.get("/search", name="search")
def search_page(request: Request, session: SessionDep, cache: CacheDep, settings: SettingsDep,
                q: str = Query("", max_length=500, description="words to look for"),
                model: str | None = Query(None, max_length=128, description="only this model's neurons"),
                page: int = Query(1, ge=1, le=1000)):
    try:
        text = check_query(q)
    except BadQuery as e:
        return error_page(request, 422, f"Invalid query: {e}.")
    model = model or None
    if model is not None:
        get_model(session, model)
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    here = urls.search(text, model=model, page=page if page > 1 else None)
    data = {"q": text, "model": model, "page": page, "page_size": PAGE_SIZE, "pages": 0, "total": 0, "results": [],
            "notes": [], "prev": None, "next": None, "share_url": base + here,
            "models": [m.name for m in text_models(session)], "probe": urls.probe(text, model=model)}
    if not text:
        data["notes"].append("Type a word or phrase: labels, families and top words are searched, and for models "
                             "with a text tower so are the neurons the text is attributed to.")
        return respond(request, "search.html", data)
    words = tokens(text)
    rankings, notes = attribution_rankings(request, session, cache, text, model)
    hits = fuse(full_text(session, text, model), rankings)
    pages = max(1, -(-len(hits) // PAGE_SIZE))
    if page > pages:
        raise NotFound(f"The search for {text!r} has {pages} page(s) of results; no page {page}.",
                       [("first page", urls.search(text, model=model))])
    shown = hits[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    if not words and not rankings:
        notes.append("The query holds no searchable words.")
    data.update(pages=pages, total=len(hits), notes=notes, results=result_cards(session, shown, words),
                prev=urls.search(text, model=model, page=page - 1 if page > 2 else None) if page > 1 else None,
                next=urls.search(text, model=model, page=page + 1) if page < pages else None)
    return respond(request, "search.html", data)
