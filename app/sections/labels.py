from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app.db import Label, UnitFamily
from app.sections import Section, UnitContext


def current_labels(session, unit_id: int) -> dict[str, Label]:
    rows = session.scalars(select(Label).where(Label.unit_id == unit_id).order_by(Label.version.desc())).all()
    out: dict[str, Label] = {}
    for r in rows:
        out.setdefault(r.source, r)
    return out


def load(session, ctx: UnitContext):
    labels = current_labels(session, ctx.unit.id)
    fams = session.scalars(
        select(UnitFamily).options(joinedload(UnitFamily.family)).where(UnitFamily.unit_id == ctx.unit.id)
    ).all()
    if not labels and not fams:
        return None

    def lab(r):
        return {"text": r.text, "author": r.author, "version": r.version, "at": r.created_at} if r else None

    return {
        "human": lab(labels.get("human")),
        "auto": lab(labels.get("auto")),
        "families": [{"name": f.family.name, "source": f.source} for f in fams],
    }


SECTION = Section("labels", "Labels and families", load, "No label yet.")
