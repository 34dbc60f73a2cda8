"""The neuron card's conditional probability plots: one per study, with links to label and export."""
from app import urls
from app.sections import Section, UnitContext
from app.studies import count_samples, progress, unit_studies


def load(session, ctx: UnitContext):
    studies = unit_studies(session, ctx.unit.id)
    samples = count_samples(session, ctx.unit.id)
    if not studies and not samples:
        return None
    return {
        "samples": samples, "studies_url": urls.neuron_studies(ctx.key),
        "studies": [{"id": s.id, "name": s.name, "categories": list(s.categories), "progress": progress(session, s),
                     "url": urls.study(s.id), "results_url": urls.study_results(s.id),
                     "plot_url": urls.study_plot(s.id), "label_url": urls.study_label(s.id)} for s in studies],
    }


SECTION = Section("studies", "Conditional probability", load,
                  "No activation samples yet: run `microscope worker examples`, then create a study here.")
