"""The searchable document of a neuron (table unit_text): its labels, families and top words.

Whoever changes one of those calls `refresh_unit_text` in the same transaction, so search never
shows a label the neuron no longer has.
"""
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Family, Label, UnitFamily, UnitText, Word, WordScore

TOP_WORDS = 20


def unit_document(session: Session, unit_id: int) -> str:
    """Current human and automatic labels, family names, then the top rendered words."""
    labels = session.scalars(
        select(Label).where(Label.unit_id == unit_id).order_by(Label.version.desc())
    ).all()
    current: dict[str, str] = {}
    for label in labels:
        current.setdefault(label.source, label.text)
    families = dict.fromkeys(session.scalars(  # a family can be both human and suggested: name it once
        select(Family.name).join(UnitFamily, UnitFamily.family_id == Family.id)
        .where(UnitFamily.unit_id == unit_id).order_by(Family.position, Family.name)
    ))
    words = session.scalars(
        select(Word.text).join(WordScore, WordScore.word_id == Word.id)
        .where(WordScore.unit_id == unit_id, WordScore.sign == "top")
        .order_by(WordScore.rank).limit(TOP_WORDS)
    ).all()
    return compose(current, families, words)


def compose(labels: dict[str, str], families, words) -> str:
    parts = [labels.get("human", ""), labels.get("auto", ""), " ".join(families), " ".join(words)]
    return "\n".join(p for p in parts if p)


def refresh_unit_text(session: Session, unit_id: int) -> None:
    """Rewrite the neuron's search document from what the store holds now."""
    document = unit_document(session, unit_id)
    row = session.get(UnitText, unit_id)
    if row is None:
        session.add(UnitText(unit_id=unit_id, document=document))
    else:
        row.document = document
    session.flush()


def refresh_unit_texts(session: Session, unit_ids: list[int]) -> None:
    """`refresh_unit_text` for many units in four queries, not four a unit (the words stage rewrites a
    whole layer's top words at once)."""
    labels: dict[int, dict[str, str]] = {u: {} for u in unit_ids}
    for label in session.scalars(select(Label).where(Label.unit_id.in_(unit_ids)).order_by(Label.version.desc())):
        labels[label.unit_id].setdefault(label.source, label.text)
    families: dict[int, dict[str, None]] = {u: {} for u in unit_ids}
    for unit_id, name in session.execute(
            select(UnitFamily.unit_id, Family.name).join(Family, UnitFamily.family_id == Family.id)
            .where(UnitFamily.unit_id.in_(unit_ids)).order_by(Family.position, Family.name)):
        families[unit_id][name] = None
    words: dict[int, list[str]] = {u: [] for u in unit_ids}
    for unit_id, text in session.execute(
            select(WordScore.unit_id, Word.text).join(Word, WordScore.word_id == Word.id)
            .where(WordScore.unit_id.in_(unit_ids), WordScore.sign == "top", WordScore.rank < TOP_WORDS)
            .order_by(WordScore.unit_id, WordScore.rank)):
        words[unit_id].append(text)
    rows = {r.unit_id: r for r in session.scalars(select(UnitText).where(UnitText.unit_id.in_(unit_ids)))}
    for unit_id in unit_ids:
        document = compose(labels[unit_id], families[unit_id], words[unit_id])
        if unit_id in rows:
            rows[unit_id].document = document
        else:
            session.add(UnitText(unit_id=unit_id, document=document))
    session.flush()
