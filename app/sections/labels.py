"""The neuron card's labels: current human and automatic labels, families, and the full history."""
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import urls
from app.sections import Section
from app.sections.rows import UNIT_ID, fetch, json_rows, when
from store.keys import UnitKey
from store.schema import CurationEvent, Family, Label, LabelScore, UnitFamily

EVENTS = 100  # the newest curation events shown


def label_json(r: Label | dict | None) -> dict | None:
    if r is None:
        return None
    if isinstance(r, Label):
        return {"text": r.text, "source": r.source, "author": r.author, "version": r.version, "at": r.created_at}
    return {"text": r["text"], "source": r["source"], "author": r["author"], "version": r["version"],
            "at": when(r["created_at"])}


def label_columns(dialect: str) -> dict:
    e, uf = CurationEvent, UnitFamily
    return {
        "history": json_rows(select(Label.id, Label.text, Label.source, Label.author, Label.version,
                                    Label.created_at).where(Label.unit_id == UNIT_ID), dialect),
        "scores": json_rows(select(LabelScore.label_id, LabelScore.score, LabelScore.method, LabelScore.detail)
                            .join(Label, LabelScore.label_id == Label.id).where(Label.unit_id == UNIT_ID), dialect),
        "families": json_rows(select(Family.name, Family.position, uf.source, uf.author, uf.score)
                              .join(Family, uf.family_id == Family.id).where(uf.unit_id == UNIT_ID), dialect),
        "events": json_rows(select(e.id, e.action, e.family, e.author, e.created_at, e.detail)
                            .where(e.unit_id == UNIT_ID).order_by(e.created_at.desc(), e.id.desc()).limit(EVENTS),
                            dialect),
        "available": json_rows(select(Family.name, Family.position), dialect),
    }


def by_position(family: dict) -> tuple:
    return family["position"], family["name"]


def build_labels(values: dict, key: UnitKey) -> dict:
    """Current labels, families (human and suggested), every label version and family change."""
    history = sorted(values["history"], key=lambda r: (when(r["created_at"]), r["version"]), reverse=True)
    current: dict[str, dict] = {}
    for r in sorted(history, key=lambda r: r["version"], reverse=True):
        current.setdefault(r["source"], r)
    fams = sorted(values["families"], key=lambda f: (f["source"] != "human", f["position"]))
    events = sorted(values["events"], key=lambda e: (when(e["created_at"]), e["id"]), reverse=True)
    human, auto = current.get("human"), current.get("auto")
    scores = {r["label_id"]: r for r in values["scores"]}
    return {
        "human": scored(label_json(human), scores.get(human["id"]) if human else None),
        "auto": scored(label_json(auto), scores.get(auto["id"]) if auto else None),
        "families": [{"name": f["name"], "source": f["source"], "url": urls.family(f["name"]),
                      "author": f["author"], "score": f["score"]} for f in fams],
        "history": [label_json(r) for r in history],
        "events": [{"action": e["action"], "family": e["family"], "author": e["author"], "at": when(e["created_at"]),
                    "detail": e["detail"]} for e in events],
        "edit": {"labels_url": urls.neuron_labels(key), "families_url": urls.neuron_families(key),
                 "based_on": human["version"] if human else None,
                 "families_available": [f["name"] for f in sorted(values["available"], key=by_position)]},
    }


def label_data(session: Session, key: UnitKey) -> dict:
    """The labels section alone (the label and family edit pages), in one SELECT."""
    return build_labels(fetch(session, (SECTION,), {"model": key.model, "layer": key.layer, "index": key.unit})
                        ["labels"], key)


def label_scores(session: Session, label_ids: list[int]) -> dict[int, LabelScore]:
    """label id -> its faithfulness row (the concepts views read it for many labels at once)."""
    if not label_ids:
        return {}
    return {s.label_id: s for s in session.scalars(select(LabelScore).where(LabelScore.label_id.in_(label_ids)))}


def scored(label: dict | None, score: dict | None) -> dict | None:
    """The label with its faithfulness (worker/analyses/selflabels.py): held-out AUC, method, runner-up concepts."""
    if label is not None:
        label["faithfulness"] = None if score is None else {
            "auc": None if score["score"] is None else round(score["score"], 3), "method": score["method"],
            "concepts": (score["detail"] or {}).get("concepts"), "heldout": (score["detail"] or {}).get("heldout")}
    return label


SECTION = Section("labels", "Labels and families", label_columns,
                  lambda values, ctx: build_labels(values, ctx.key), "No label yet.")
