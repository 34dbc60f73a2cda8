from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app.db import WordScore
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    rows = session.scalars(
        select(WordScore).options(joinedload(WordScore.word))
        .where(WordScore.unit_id == ctx.unit.id).order_by(WordScore.sign.desc(), WordScore.rank)
    ).all()
    if not rows:
        return None
    top = [{"word": r.word.text, "score": r.score} for r in rows if r.sign == "top"]
    bottom = [{"word": r.word.text, "score": r.score} for r in rows if r.sign == "bottom"]
    scale = max([abs(w["score"]) for w in top + bottom] or [1.0]) or 1.0
    for w in top + bottom:
        w["bar"] = round(100 * abs(w["score"]) / scale, 1)
    return {"top": top, "bottom": bottom}


SECTION = Section("words", "Rendered words", load, "No rendered-word scores yet: run `microscope worker words`.")
