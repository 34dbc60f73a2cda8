"""The neuron card's rendered words: top and most negative words with bars (filled by `microscope worker words`)."""
import html

from markupsafe import Markup
from sqlalchemy import select

from app import urls
from app.embeddings import TYPO_TOP, shared_fragment
from app.sections import Section, UnitContext
from app.sections.rows import UNIT_ID, json_rows
from store.schema import Word, WordScore


def columns(dialect: str) -> dict:
    rows = (select(Word.text, WordScore.score, WordScore.sign, WordScore.rank)
            .join(Word, WordScore.word_id == Word.id).where(WordScore.unit_id == UNIT_ID))
    return {"rows": json_rows(rows, dialect)}


def _words(rows: list[dict], sign: str) -> list[dict]:
    return [{"word": r["text"], "score": r["score"], "url": urls.word(r["text"])}
            for r in sorted(rows, key=lambda r: r["rank"]) if r["sign"] == sign]


def build(values: dict, ctx: UnitContext):
    rows = values["rows"]
    if not rows:
        return None
    top, bottom = _words(rows, "top"), _words(rows, "bottom")
    scale = max([abs(w["score"]) for w in top + bottom] or [1.0]) or 1.0
    for w in top + bottom:
        w["bar"] = round(100 * abs(w["score"]) / scale, 1)
    return {"top": top, "bottom": bottom,
            "typographic": shared_fragment([w["word"] for w in top[:TYPO_TOP]]) if len(top) >= TYPO_TOP else None,
            "embedding_url": urls.embeddings(ctx.key.model, ctx.key.layer),
            "regions_url": urls.regions(ctx.key.model, ctx.key.layer)}


def items_html(words: list[dict], sign: str) -> Markup:
    """One side's words as list items (the template's `word_items`), built in Python like the examples'
    (app.sections.examples.item_html): a page lists 70."""
    esc = html.escape
    return Markup("".join(
        f'<li><a href="{esc(w["url"])}">{esc(w["word"])}</a><span class="bar {sign}" style="width: {w["bar"]}%">'
        f'</span><span class="num">{w["score"]:.3g}</span></li>' for w in words))


SECTION = Section("words", "Rendered words", columns, build,
                  "No rendered-word scores yet: run `microscope worker words ARCH --name MODEL`.")
