"""The neuron card's labels: current human and automatic labels, families, and the full history."""
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import urls
from app.db import Family, Label, LabelScore
from app.families import unit_events, unit_families
from app.keys import UnitKey
from app.sections import Section, UnitContext


def label_json(r: Label | None) -> dict | None:
    if r is None:
        return None
    return {"text": r.text, "source": r.source, "author": r.author, "version": r.version, "at": r.created_at}


def label_data(session: Session, unit_id: int, key: UnitKey) -> dict:
    """Current labels, families (human and suggested), every label version and family change."""
    history = list(session.scalars(
        select(Label).where(Label.unit_id == unit_id).order_by(Label.created_at.desc(), Label.version.desc())))
    current: dict[str, Label] = {}
    for r in sorted(history, key=lambda r: r.version, reverse=True):
        current.setdefault(r.source, r)
    fams = unit_families(session, unit_id)
    events = unit_events(session, unit_id)
    human = current.get("human")
    scores = label_scores(session, [r.id for r in current.values()])
    return {
        "human": scored(label_json(human), scores.get(human.id) if human else None),
        "auto": scored(label_json(current.get("auto")), scores.get(current["auto"].id) if "auto" in current else None),
        "families": [{"name": f.family.name, "source": f.source, "url": urls.family(f.family.name),
                      "author": f.author, "score": f.score} for f in fams],
        "history": [label_json(r) for r in history],
        "events": [{"action": e.action, "family": e.family, "author": e.author, "at": e.created_at,
                    "detail": e.detail} for e in events],
        "edit": {"labels_url": urls.neuron_labels(key), "families_url": urls.neuron_families(key),
                 "based_on": human.version if human else None,
                 "families_available": list(session.scalars(select(Family.name).order_by(Family.position)))},
    }


def label_scores(session: Session, label_ids: list[int]) -> dict[int, LabelScore]:
    if not label_ids:
        return {}
    return {s.label_id: s for s in session.scalars(select(LabelScore).where(LabelScore.label_id.in_(label_ids)))}


def scored(label: dict | None, score: LabelScore | None) -> dict | None:
    """The label with its faithfulness (worker/selflabels.py): held-out AUC, method, runner-up concepts."""
    if label is not None:
        label["faithfulness"] = None if score is None else {
            "auc": None if score.score is None else round(score.score, 3), "method": score.method,
            "concepts": (score.detail or {}).get("concepts"), "heldout": (score.detail or {}).get("heldout")}
    return label


def load(session, ctx: UnitContext):
    return label_data(session, ctx.unit.id, ctx.key)


SECTION = Section("labels", "Labels and families", load, "No label yet.")
