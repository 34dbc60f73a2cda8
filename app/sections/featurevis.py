from sqlalchemy import select

from app import urls
from app.db import FeatureVis
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    rows = session.scalars(
        select(FeatureVis).where(FeatureVis.unit_id == ctx.unit.id).order_by(FeatureVis.kind, FeatureVis.id.desc())
    ).all()
    if not rows:
        return None
    latest: dict[str, FeatureVis] = {}
    for row in rows:
        latest.setdefault(row.kind, row)

    def item(r: FeatureVis):
        return {"kind": r.kind, "url": urls.cache(r.image), "thumb": urls.cache(r.thumb or r.image),
                "objective": r.objective, "steps": r.steps, "size": r.size, "seed": r.seed}

    items = [item(r) for r in latest.values()]
    return {
        "plain": next((i for i in items if i["kind"] == "plain"), None),
        "diversity": [i for i in items if i["kind"].startswith("diversity")],
        "facets": [dict(i, facet=i["kind"].removeprefix("facet:")) for i in items if i["kind"].startswith("facet:")],
    }


SECTION = Section("featurevis", "Feature visualization", load,
                  "No feature visualization yet: run `microscope worker featurevis`.")
