"""The neuron card's activation statistics, with the histogram as an SVG bar chart."""
from markupsafe import Markup

from app.sections import Section, UnitContext


def build(_values, ctx: UnitContext):
    s = ctx.stats
    if s is None:
        return None
    return {
        "n": s.n, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
        "quantiles": s.quantiles, "histogram": s.histogram,
        "max_sigma": ctx.sigma(s.max), "min_sigma": ctx.sigma(s.min),
    }


def histogram_bars(counts: list) -> Markup:
    """The histogram's bars as SVG rects, one a bin in a 40-high box (the template's `histogram_bars`), built in
    Python like the examples' list items (a page's histogram has 40 bins)."""
    peak = max(counts, default=0)
    bars = []
    for i, c in enumerate(counts):
        h = 40 * c / peak if peak else 0
        bars.append(f'<rect x="{i}" y="{40 - h}" width="0.9" height="{h}"><title>{c} images</title></rect>')
    return Markup("".join(bars))


SECTION = Section("stats", "Activation statistics", lambda _dialect: {}, build,
                  "No statistics yet: run `microscope worker examples` on a corpus.")
