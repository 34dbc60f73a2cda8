"""The neuron card's rendered words: top and most negative words with bars (filled by `microscope worker words`)."""
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app import urls
from app.db import WordScore
from app.embeddings import TYPO_TOP, shared_fragment
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    rows = session.scalars(
        select(WordScore).options(joinedload(WordScore.word))
        .where(WordScore.unit_id == ctx.unit.id).order_by(WordScore.sign.desc(), WordScore.rank)
    ).all()
    if not rows:
        return None
    top = [{"word": r.word.text, "score": r.score, "url": urls.word(r.word.text)} for r in rows if r.sign == "top"]
    bottom = [{"word": r.word.text, "score": r.score, "url": urls.word(r.word.text)} for r in rows
              if r.sign == "bottom"]
    scale = max([abs(w["score"]) for w in top + bottom] or [1.0]) or 1.0
    for w in top + bottom:
        w["bar"] = round(100 * abs(w["score"]) / scale, 1)
    return {"top": top, "bottom": bottom,
            "typographic": shared_fragment([w["word"] for w in top[:TYPO_TOP]]) if len(top) >= TYPO_TOP else None,
            "embedding_url": urls.embeddings(ctx.key.model, ctx.key.layer),
            "regions_url": urls.regions(ctx.key.model, ctx.key.layer)}


SECTION = Section("words", "Rendered words", load,
                  "No rendered-word scores yet: run `microscope worker words ARCH --name MODEL`.")
