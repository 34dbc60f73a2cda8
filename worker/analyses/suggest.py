"""Automatic suggestions per neuron: a family guess from its top rendered words and a short label from
its top words and the captions of its top dataset examples.

Suggestions are stored with source "auto" (labels: a new "auto" version only when the text changes;
families: the unit's "auto" memberships are replaced) and never touch what editors wrote. Cheap and
idempotent: a killed run is simply run again. Needs no torch, only the store.
"""
import re
from collections import Counter
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.families import set_auto_families
from app.labelling import MAX_LABEL, append_auto_label
from app.unit_text import refresh_unit_text
from store.schema import DatasetExample, Family, Image, Layer, Model, Unit, Word, WordScore
from store.writes import Store, recorded_run
from worker.data.lexicons import STOCK_WORDS

STAGE = "suggest"
BATCH = 200  # units per transaction (each unit is whole within one)
GENERIC = STOCK_WORDS  # stock-photo words that label nothing


@dataclass(frozen=True)
class SuggestOptions:
    top_words: int = 5  # top rendered words that vote on the family (the paper's region rule uses 5)
    threshold: float = 0.6  # share of those words that must point to a family
    captions: int = 10  # top dataset examples whose captions feed the label
    label_terms: int = 3  # terms in the short label

    def check(self) -> None:
        if self.top_words < 1 or self.captions < 0 or self.label_terms < 1 or not 0 < self.threshold <= 1:
            raise ValueError("--top-words and --label-terms must be >= 1, --captions >= 0, 0 < --threshold <= 1")


@dataclass
class UnitInputs:
    index: int
    words: list[str]
    captions: list[str]


def affix_share(words: list[str]) -> float:
    """The largest share of words with one common prefix (2–4 letters) or suffix (3–4 letters), e.g. "-ing"."""
    counts: Counter = Counter()
    for w in {w.lower() for w in words}:
        counts.update({("pre", w[:n]) for n in (2, 3, 4) if len(w) > n + 1})
        counts.update({("suf", w[-n:]) for n in (3, 4) if len(w) > n + 1})
    return max(counts.values(), default=0) / len(words) if words else 0.0


def guess_families(words: list[str], lexicons: dict[str, frozenset[str]], threshold: float) -> dict[str, float]:
    """Families whose word list holds at least `threshold` of the words, with that share as the score.
    Typographic (a shared prefix or suffix) only when no word list matches."""
    if not words:
        return {}
    out = {}
    for family, lexicon in lexicons.items():
        hits = sum(1 for w in words if w.lower() in lexicon or (family == "Counting" and w.isdigit()))
        if hits / len(words) >= threshold:
            out[family] = round(hits / len(words), 3)
    if not out and (share := affix_share(words)) >= threshold:
        out["Typographic"] = round(share, 3)
    return out


def caption_terms(captions: list[str]) -> Counter:
    """Document frequency of the content words of the captions (stop words and stock-photo words left out)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    df: Counter = Counter()
    for caption in captions:
        tokens = {t for t in re.findall(r"[^\W\d_][\w'-]*", caption.lower())
                  if len(t) > 2 and t not in ENGLISH_STOP_WORDS and t not in GENERIC}
        df.update(tokens)
    return df


def short_label(words: list[str], captions: list[str], n_terms: int) -> str | None:
    """The best `n_terms` terms, "a / b / c": top words score by rank, caption words by the share of
    captions that use them (at least two, when there are three or more captions); both add up."""
    score: dict[str, float] = {}
    for rank, w in enumerate(words):
        score[w.lower()] = score.get(w.lower(), 0.0) + 1.0 - rank / len(words)
    min_df = 2 if len(captions) >= 3 else 1
    for term, n in caption_terms(captions).items():
        if n >= min_df:
            score[term] = score.get(term, 0.0) + n / len(captions)
    best = sorted(score, key=lambda t: -score[t])[:n_terms]  # stable: ties keep word order
    label = " / ".join(best)
    return label[:MAX_LABEL].strip() or None


def read_inputs(session: Session, layer: Layer, opts: SuggestOptions) -> dict[int, UnitInputs]:
    """unit id -> its top words (best first) and top dataset-example captions (best first)."""
    units = {uid: UnitInputs(index, [], []) for uid, index in session.execute(
        select(Unit.id, Unit.index).where(Unit.layer_id == layer.id).order_by(Unit.index))}
    for uid, text in session.execute(
        select(WordScore.unit_id, Word.text).join(Word, Word.id == WordScore.word_id)
        .join(Unit, Unit.id == WordScore.unit_id)
        .where(Unit.layer_id == layer.id, WordScore.sign == "top", WordScore.rank < opts.top_words)
        .order_by(WordScore.unit_id, WordScore.rank)
    ):
        units[uid].words.append(text)
    if opts.captions:
        for uid, caption in session.execute(
            select(DatasetExample.unit_id, Image.caption).join(Image, Image.id == DatasetExample.image_id)
            .join(Unit, Unit.id == DatasetExample.unit_id)
            .where(Unit.layer_id == layer.id, DatasetExample.sign == "top", DatasetExample.rank < opts.captions)
            .order_by(DatasetExample.unit_id, DatasetExample.rank)
        ):
            if caption:
                units[uid].captions.append(caption)
    return units


def write_unit(session: Session, unit_id: int, families: dict[str, float], label: str | None) -> bool:
    """Replace the unit's automatic families, append its automatic label if it changed; True if it did."""
    set_auto_families(session, unit_id, families)
    changed = label is not None and append_auto_label(session, unit_id, label, "worker") is not None
    refresh_unit_text(session, unit_id)
    return changed


Suggestion = tuple[dict[str, float], str | None]  # (family -> score, short label)


def run_suggest(store: Store, model_name: str, layer_name: str | None = None,
                opts: SuggestOptions | None = None) -> dict:
    """Suggest a family and a label for every neuron of a layer (default: the model's default layer)."""
    opts = opts or SuggestOptions()
    return write_suggestions(store, model_name, compute_suggestions(store, model_name, layer_name, opts), opts)


def compute_suggestions(store: Store, model_name: str, layer_name: str | None, opts: SuggestOptions) -> dict:
    """Every unit's suggestion (None: it has neither words nor captions), from the stored top words and
    captions; writes nothing. {"layer", "families": the families suggested from, "units": {unit id: …}}."""
    from worker.data.lexicons import family_lexicons

    opts.check()
    with store.sessions() as session:
        layer = pick_layer(session, model_name, layer_name)
        known = set(session.scalars(select(Family.name)))
        units, layer_name = read_inputs(session, layer, opts), layer.name
    lexicons = {f: words for f, words in family_lexicons().items() if f in known}
    return {"layer": layer_name, "families": sorted(lexicons),
            "units": {uid: suggest_one(inputs, lexicons, known, opts) for uid, inputs in units.items()}}


def suggest_one(inputs: UnitInputs, lexicons: dict[str, frozenset[str]], known: set[str],
                opts: SuggestOptions) -> Suggestion | None:
    if not inputs.words and not inputs.captions:
        return None
    families = {f: score for f, score in guess_families(inputs.words, lexicons, opts.threshold).items()
                if f in known}  # a family an editor renamed away is not recreated
    return families, short_label(inputs.words, inputs.captions, opts.label_terms)


def write_suggestions(store: Store, model_name: str, computed: dict, opts: SuggestOptions) -> dict:
    """Store `compute_suggestions`' result, `BATCH` units per transaction; the run's report."""
    settings = {"stage": STAGE, **asdict(opts), "families": computed["families"]}
    units = computed["units"]
    with recorded_run(store, STAGE, model_name, settings, layer=computed["layer"]) as report:
        report.update(units=len(units), no_data=0, labels_changed=0, families={})
        ids = list(units)
        for start in range(0, len(ids), BATCH):
            with store.sessions.begin() as session:
                for uid in ids[start:start + BATCH]:
                    write_one(session, uid, units[uid], report)
    return report


def write_one(session: Session, uid: int, suggestion: Suggestion | None, report: dict) -> None:
    if suggestion is None:
        report["no_data"] += 1
        return
    families, label = suggestion
    report["labels_changed"] += write_unit(session, uid, families, label)
    for f in families:
        report["families"][f] = report["families"].get(f, 0) + 1


def pick_layer(session: Session, model_name: str, layer_name: str | None) -> Layer:
    model = session.scalar(select(Model).where(Model.name == model_name))
    if model is None:
        names = ", ".join(session.scalars(select(Model.name).order_by(Model.name))) or "none"
        raise ValueError(f"no model {model_name!r} in the store (models: {names})")
    if not model.layers:
        raise ValueError(f"model {model_name} has no layers")
    if layer_name is None:
        return next((la for la in model.layers if la.is_default), model.layers[-1])
    for la in model.layers:
        if la.name == layer_name:
            return la
    raise ValueError(f"model {model_name} has no layer {layer_name!r} (layers: "
                     f"{', '.join(la.name for la in model.layers)})")
