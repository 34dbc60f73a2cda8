"""The conditional probability plot of a study, drawn with matplotlib (Agg, no pyplot state)."""
import io

FORMATS = {"svg": "image/svg+xml", "png": "image/png"}


def render_plot(res: dict, title: str, fmt: str = "svg") -> bytes:
    """Stacked bars of P(category | bucket) at each bucket's activation range in σ from zero."""
    from matplotlib import colormaps, rc_context
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab20" if len(res["categories"]) > 10 else "tab10"]
    buckets = res["buckets"]
    widths = [0.92 * (b["hi_sigma"] - b["lo_sigma"]) for b in buckets]
    centres = [b["center_sigma"] for b in buckets]
    bottom = [0.0] * len(buckets)
    for i, cat in enumerate(res["categories"]):
        heights = [b["p"][cat] or 0.0 for b in buckets]
        ax.bar(centres, heights, width=widths, bottom=bottom, color=colours(i % colours.N), label=cat)
        bottom = [x + h for x, h in zip(bottom, heights, strict=True)]
    for b, x in zip(buckets, centres, strict=True):
        ax.annotate(f"n={b['labelled']}", (x, 1.0), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, color="#555")
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("activation (standard deviations from zero)")
    ax.set_ylabel("P(category | activation)")
    ax.set_title(title, fontsize=10)
    ax.axvline(0, color="#999", linewidth=0.8)
    if res["categories"]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    buf = io.BytesIO()
    with rc_context({"svg.fonttype": "none"}):  # keep text as text: smaller, selectable, searchable
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()
