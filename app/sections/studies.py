"""The neuron card's conditional probability plots: one per study, with links to label and export."""
from sqlalchemy import func, select

from app import urls
from app.db import ActivationSample, Study, StudyItem, StudyLabel
from app.sections import Section, UnitContext
from app.sections.rows import UNIT_ID, json_rows, when


def columns(dialect: str) -> dict:
    uid = UNIT_ID
    done = (select(StudyItem.study_id, StudyLabel.labeller, func.count().label("n"),
                   func.min(StudyLabel.created_at).label("first"))
            .join(StudyItem, StudyLabel.item_id == StudyItem.id).join(Study, StudyItem.study_id == Study.id)
            .where(Study.unit_id == uid).group_by(StudyItem.study_id, StudyLabel.labeller))
    samples = select(func.count()).select_from(ActivationSample).where(ActivationSample.unit_id == uid)
    return {"studies": json_rows(select(Study.id, Study.name, Study.categories).where(Study.unit_id == uid), dialect),
            "progress": json_rows(done, dialect), "samples": samples.scalar_subquery()}


def progress(rows: list[dict], study_id: int) -> dict[str, int]:
    """labeller -> number of items labelled, first labeller first (as app.studies.progress)."""
    mine = sorted((r for r in rows if r["study_id"] == study_id), key=lambda r: (when(r["first"]), r["labeller"]))
    return {r["labeller"]: r["n"] for r in mine}


def build(values: dict, ctx: UnitContext):
    studies = sorted(values["studies"], key=lambda s: -s["id"])
    if not studies and not values["samples"]:
        return None
    return {
        "samples": values["samples"], "studies_url": urls.neuron_studies(ctx.key),
        "studies": [{"id": s["id"], "name": s["name"], "categories": list(s["categories"]),
                     "progress": progress(values["progress"], s["id"]), "url": urls.study(s["id"]),
                     "results_url": urls.study_results(s["id"]), "plot_url": urls.study_plot(s["id"]),
                     "label_url": urls.study_label(s["id"])} for s in studies],
    }


SECTION = Section("studies", "Conditional probability", columns, build,
                  "No activation samples yet: run `microscope worker examples`, then create a study here.")
