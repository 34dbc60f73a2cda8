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


SECTION = Section("stats", "Activation statistics", lambda _dialect: {}, build,
                  "No statistics yet: run `microscope worker examples` on a corpus.")
