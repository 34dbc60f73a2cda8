"""The neuron card's dataset examples: top and most negative images, each with its spatial map.

Maps come from the unit's one `unit_heatmaps` row (app/heatmaps.py), read as scalar columns of the page's one
statement. Each example carries the map as numbers (`heatmap`, for the JSON twin), its quantized bytes for
the canvas the page draws (`heat`: base64 uint8, static/heatmaps.js), and the URL of the server-rendered
overlay PNG.
"""
import html

from markupsafe import Markup
from sqlalchemy import select

from app import urls
from app.heatmaps import Heatmaps, unpack
from app.sections import Section, UnitContext
from app.sections.rows import PAGE_UNIT, UNIT_ID, json_rows
from store.schema import DatasetExample, Image, Run, UnitHeatmaps

HEAT_COLUMNS = ("n_top", "height", "width", "maps", "lo", "hi")


def columns(dialect: str) -> dict:
    uid = UNIT_ID
    rows = (select(DatasetExample.sign, DatasetExample.rank, DatasetExample.activation, DatasetExample.run_id,
                   Image.id.label("image_id"), Image.thumb, Image.path, Image.caption, Image.source)
            .join(Image, DatasetExample.image_id == Image.id).where(DatasetExample.unit_id == uid))
    runs = select(Run.id, Run.settings, Run.report).where(
        Run.id.in_(select(DatasetExample.run_id).where(DatasetExample.unit_id == uid)))
    heat = {f"heat_{c}": getattr(UnitHeatmaps, c) for c in HEAT_COLUMNS}  # a join of the page's statement
    return {"rows": json_rows(rows, dialect), "runs": json_rows(runs, dialect), **heat}


def heatmaps_of(values: dict) -> Heatmaps | None:
    stored = {c: values[f"heat_{c}"] for c in HEAT_COLUMNS}
    return unpack(stored) if stored["maps"] is not None else None


def example(r: dict, ctx: UnitContext, heat: Heatmaps | None) -> dict:
    out = {"rank": r["rank"], "activation": r["activation"], "sigma": ctx.sigma(r["activation"]),
           "image": urls.cache(r["thumb"] or r["path"]), "full": urls.cache(r["path"]),
           "caption": r["caption"], "source": r["source"], "heatmap": None, "heat": None, "heatmap_image": None}
    i = heat.row(r["sign"], r["rank"]) if heat else None
    if i is not None:
        if ctx.twin:  # the page draws the quantized bytes; only the twin lists the map's numbers
            out["heatmap"] = [[float(f"{v:.4g}") for v in line] for line in heat.values(i).tolist()]
        out["heat"] = {"q": heat.b64(i), "lo": float(heat.lo[i]), "hi": float(heat.hi[i])}
        out["heatmap_image"] = urls.example_heatmap(ctx.key, r["sign"], r["rank"])
    return out


def build(values: dict, ctx: UnitContext):
    rows = sorted(values["rows"], key=lambda r: (r["sign"] != "top", r["rank"]))
    if not rows:
        return None
    run = next((r for r in values["runs"] if r["id"] == rows[0]["run_id"]), None)
    settings, report = (run["settings"] or {}, run["report"] or {}) if run else ({}, {})
    heat = heatmaps_of(values)
    out = {"top": [], "bottom": [], "reduce": settings.get("reduce"), "signal": settings.get("signal"),
           "signal_text": settings.get("signal_text"), "images": report.get("images"),
           "run": run["id"] if run else None, "grid": list(heat.maps.shape[1:]) if heat else None}
    for r in rows:
        out.setdefault(r["sign"], []).append(example(r, ctx, heat))
    return out


def item_html(e: dict, sign: str, grid: list | None) -> str:
    """One example's list item. Built here, not in the section's template: a page lists up to 128 examples (the
    demo's K = 64 a side), and Jinja spent ~20 µs on each (~17 escaped values, ~40 output fragments), two to
    three times this function's cost. Text and URLs are escaped (html.escape: str in, str out; markupsafe's
    Markup in an f-string cost twice as much); numbers are formatted, never markup."""
    esc = html.escape
    act = f"{e['activation']:.3g}"
    sigma = f" · {e['sigma']:+.1f}σ" if e["sigma"] is not None else ""
    alt = esc(f"{e['caption'] or e['source'] or 'dataset example'}, {sign} {e['rank'] + 1}, activation {act}")
    heat = ""
    if e["heat"]:
        q, lo, hi = esc(e["heat"]["q"]), e["heat"]["lo"], e["heat"]["hi"]
        heat = (f'<canvas class="heat" width="{grid[1]}" height="{grid[0]}" data-sign="{sign}" data-heat="{q}" '
                f'data-lo="{lo}" data-hi="{hi}" aria-hidden="true"></canvas>\n  <noscript><img class="heat" '
                f'src="{esc(e["heatmap_image"])}" alt="" width="112" height="112" loading="lazy"></noscript>')
    caption = f'<span class="caption">{esc(e["caption"])}</span>' if e["caption"] else ""
    return (f'<li><a href="{esc(e["full"])}" title="{esc(e["source"] or "")}"><span class="ex">\n'
            f'  <img src="{esc(e["image"])}" alt="{alt}" width="112" height="112" loading="lazy">\n'
            f'  {heat}\n  </span></a>\n  <span class="act">{act}{sigma}</span>\n  {caption}\n</li>\n')


def items_html(examples: list[dict], sign: str, grid: list | None) -> Markup:
    """The list items of one side's examples (the template's `example_items`)."""
    return Markup("".join(item_html(e, sign, grid) for e in examples))


SECTION = Section("examples", "Dataset examples", columns, build,
                  "No dataset examples yet: run `microscope worker examples MODEL --corpus DIR`.",
                  joins=((UnitHeatmaps.__table__, UnitHeatmaps.unit_id == PAGE_UNIT.c.unit_id),))
