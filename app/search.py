"""Search neurons by text: full-text search over unit_text documents fused with text attribution.

Full text runs on the store's own engine: SQLite FTS5 (`unit_text_fts`, kept by triggers) or Postgres
`to_tsvector('english', document)` with its GIN index (migration 0003). The user's text never reaches
either query language: it is cut into word tokens, each passed as a quoted FTS5 string or as a bound
`plainto_tsquery` parameter, OR-ed together and ranked (bm25 / ts_rank_cd), so quotes, NEAR, *, ^,
parentheses or SQL in a query are just characters.

Attribution ranks the penultimate neurons of each model that has a read-out by W · text_embedding.
The two rankings are merged by reciprocal rank fusion (score = Σ 1 / (K + rank)), which needs no common
scale between bm25 and attribution values.
"""
import re
import unicodedata
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from store.schema import Layer, Model, Unit, UnitText

MAX_QUERY = 500
MAX_TOKENS = 16
MAX_TOKEN_CHARS = 64
FTS_LIMIT = 200
ATTRIBUTION_LIMIT = 50
RRF_K = 60
TOKEN_RE = re.compile(r"\w+")


class BadQuery(ValueError):
    """A query that can never be searched (too long, control characters): answered with 422."""


def check_query(q: str) -> str:
    """The query with outer whitespace removed, or BadQuery with the reason."""
    if len(q) > MAX_QUERY:
        raise BadQuery(f"the query is {len(q)} characters long; the limit is {MAX_QUERY}")
    bad = sorted({f"U+{ord(c):04X}" for c in q if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r"})
    if bad:
        raise BadQuery(f"the query contains control characters ({', '.join(bad[:5])}); type plain text")
    return " ".join(q.split())


def tokens(q: str) -> list[str]:
    """The query's words, lower-cased, de-duplicated, at most MAX_TOKENS of at most MAX_TOKEN_CHARS each."""
    out = dict.fromkeys(t.lower()[:MAX_TOKEN_CHARS] for t in TOKEN_RE.findall(q))
    return list(out)[:MAX_TOKENS]


def _model_filter(model: str | None) -> str:
    return "AND models.name = :model " if model is not None else ""


def _sqlite_fts(session: Session, words: list[str], model: str | None, limit: int) -> list[tuple[int, float]]:
    expr = " OR ".join(f'"{w}"' for w in words)  # \w+ tokens hold no quote: each is one FTS5 string
    sql = ("SELECT unit_text_fts.rowid, -bm25(unit_text_fts) AS score FROM unit_text_fts "
           "JOIN units ON units.id = unit_text_fts.rowid JOIN layers ON layers.id = units.layer_id "
           "JOIN models ON models.id = layers.model_id "
           f"WHERE unit_text_fts MATCH :expr {_model_filter(model)}"
           "ORDER BY score DESC, unit_text_fts.rowid LIMIT :limit")
    return [(r[0], r[1]) for r in session.execute(text(sql), {"expr": expr, "model": model, "limit": limit})]


def _postgres_fts(session: Session, words: list[str], model: str | None, limit: int) -> list[tuple[int, float]]:
    query = " || ".join(f"plainto_tsquery('english', :w{i})" for i in range(len(words)))
    sql = (f"SELECT ut.unit_id, ts_rank_cd(to_tsvector('english', ut.document), q.q) AS score "
           f"FROM (SELECT {query} AS q) AS q, unit_text ut "
           "JOIN units ON units.id = ut.unit_id JOIN layers ON layers.id = units.layer_id "
           "JOIN models ON models.id = layers.model_id "
           f"WHERE to_tsvector('english', ut.document) @@ q.q {_model_filter(model)}"
           "ORDER BY score DESC, ut.unit_id LIMIT :limit")
    params = {f"w{i}": w for i, w in enumerate(words)} | {"model": model, "limit": limit}
    return [(r[0], float(r[1])) for r in session.execute(text(sql), params)]


FTS = {"sqlite": _sqlite_fts, "postgresql": _postgres_fts}


def full_text(session: Session, q: str, model: str | None = None, limit: int = FTS_LIMIT) -> list[tuple[int, float]]:
    """(unit id, relevance) of the documents matching any word of `q`, best first."""
    words = tokens(q)
    if not words:
        return []
    dialect = session.get_bind().dialect.name
    if dialect not in FTS:
        raise RuntimeError(f"full-text search is not set up for {dialect}")
    return FTS[dialect](session, words, model, limit)


@dataclass
class Hit:
    unit_id: int
    score: float = 0.0
    text_rank: int | None = None
    text_score: float | None = None
    attribution: float | None = None
    attribution_rank: int | None = None
    sources: list[str] = field(default_factory=list)


def fuse(text_hits: list[tuple[int, float]], attribution_hits: list[list[tuple[int, float]]]) -> list[Hit]:
    """Reciprocal rank fusion of the full-text ranking and each model's attribution ranking."""
    hits: dict[int, Hit] = {}
    for rank, (uid, score) in enumerate(text_hits, 1):
        hit = hits.setdefault(uid, Hit(uid))
        hit.text_rank, hit.text_score = rank, score
        hit.score += 1 / (RRF_K + rank)
        hit.sources.append("text")
    for ranking in attribution_hits:
        for rank, (uid, value) in enumerate(ranking, 1):
            hit = hits.setdefault(uid, Hit(uid))
            hit.attribution, hit.attribution_rank = value, rank
            hit.score += 1 / (RRF_K + rank)
            hit.sources.append("attribution")
    return sorted(hits.values(), key=lambda h: (-h.score, h.unit_id))


def unit_ids(session: Session, model: str, layer: str, indices: list[int]) -> dict[int, int]:
    """Unit index → unit id for one layer."""
    rows = session.execute(
        select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
        .where(Model.name == model, Layer.name == layer, Unit.index.in_(bindparam("ix", expanding=True))),
        {"ix": indices})
    return dict(rows.all())


def describe(session: Session, ids: list[int]) -> dict[int, dict]:
    """Neuron key parts and search document for each unit id."""
    rows = session.execute(
        select(Unit.id, Model.name, Layer.name, Unit.index, UnitText.document)
        .join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
        .outerjoin(UnitText, UnitText.unit_id == Unit.id).where(Unit.id.in_(ids)))
    return {uid: {"model": m, "layer": la, "unit": i, "document": doc or ""} for uid, m, la, i, doc in rows}


def excerpt(document: str, words: list[str], width: int = 160) -> str:
    """A stretch of the document around its first matching word."""
    if len(document) <= width:
        return document
    low = document.lower()
    at = min((p for p in (low.find(w) for w in words) if p >= 0), default=0)
    start = max(0, min(at - width // 3, len(document) - width))
    return ("…" if start else "") + document[start:start + width].strip() + "…"
