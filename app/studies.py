"""Conditional-probability studies (the paper's appendix): sample stimuli per activation bucket,
let people label them blind, keep every labeller's answers.

Buckets are uniform in activation from the minimum to the maximum of the neuron's activation
samples; each gets `per_bucket` stimuli drawn at random (all of them when a bucket holds fewer).
Items are stored in a shuffled display order, so neither their order nor their ids reveal a bucket.
"""
import re

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from app import urls
from app.lookup import NotFound
from store.schema import ActivationSample, Study, StudyItem, StudyLabel, UnitStats

MAX_BUCKETS = 50
MAX_PER_BUCKET = 500
MAX_CATEGORIES = 24
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class StudyError(ValueError):
    """Input a study cannot use (answered with 422 and this message)."""


def clean_name(text: str, what: str) -> str:
    text = " ".join(str(text).split())
    if not NAME_RE.match(text):
        raise StudyError(f"{what} must be 1–64 printable characters, got {text!r}")
    return text


def clean_categories(categories: list[str]) -> list[str]:
    """Trimmed, distinct (case-insensitively), 1..MAX_CATEGORIES names."""
    out: list[str] = []
    for c in categories:
        c = clean_name(c, "a category")
        if c.casefold() in {o.casefold() for o in out}:
            raise StudyError(f"category {c!r} is given twice")
        out.append(c)
    if not 1 <= len(out) <= MAX_CATEGORIES:
        raise StudyError(f"a study needs 1 to {MAX_CATEGORIES} categories, got {len(out)}")
    return out


def bucket_edges(lo: float, hi: float, n_buckets: int) -> np.ndarray:
    return np.linspace(lo, hi, n_buckets + 1)


def assign_buckets(activations: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket index of each activation; the maximum falls in the last bucket."""
    return np.clip(np.searchsorted(edges, activations, side="right") - 1, 0, len(edges) - 2)


def sample_buckets(activations: np.ndarray, n_buckets: int, per_bucket: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Uniform bucket edges over [min, max] and up to `per_bucket` random sample indices per bucket."""
    edges = bucket_edges(float(activations.min()), float(activations.max()), n_buckets)
    buckets = assign_buckets(activations, edges)
    picks: list[tuple[int, int]] = []
    for b in range(n_buckets):
        members = np.flatnonzero(buckets == b)
        chosen = rng.choice(members, size=min(per_bucket, len(members)), replace=False)
        picks.extend((int(i), b) for i in sorted(chosen))
    return edges, picks


def unit_std(session: Session, unit_id: int, activations: np.ndarray) -> float:
    """The neuron's activation std (UnitStats), else the std of its activation samples."""
    stats = session.get(UnitStats, unit_id)
    if stats is not None and stats.std and stats.std > 0:
        return float(stats.std)
    return float(activations.std())


def count_samples(session: Session, unit_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(ActivationSample).where(ActivationSample.unit_id == unit_id)) or 0


def create_study(session: Session, unit_id: int, name: str, categories: list[str], n_buckets: int,
                 per_bucket: int, author: str, seed: int = 0) -> Study:
    """Sample the stimuli of a new study from the neuron's activation samples and commit it."""
    if not 2 <= n_buckets <= MAX_BUCKETS:
        raise StudyError(f"n_buckets must be 2 to {MAX_BUCKETS}, got {n_buckets}")
    if not 1 <= per_bucket <= MAX_PER_BUCKET:
        raise StudyError(f"per_bucket must be 1 to {MAX_PER_BUCKET}, got {per_bucket}")
    rows = session.execute(
        select(ActivationSample.image_id, ActivationSample.activation)
        .where(ActivationSample.unit_id == unit_id).order_by(ActivationSample.image_id)
    ).all()
    if not rows:
        raise StudyError("this neuron has no activation samples yet: run `microscope worker examples` first")
    activations = np.array([a for _, a in rows], dtype=np.float64)
    if activations.min() == activations.max():
        raise StudyError(f"all {len(rows)} activation samples are equal ({activations[0]:g}): nothing to bucket")
    rng = np.random.default_rng(seed)
    edges, picks = sample_buckets(activations, n_buckets, per_bucket, rng)
    study = Study(unit_id=unit_id, name=clean_name(name, "a study name"), categories=clean_categories(categories),
                  n_buckets=n_buckets, per_bucket=per_bucket, author=author, seed=seed,
                  act_min=float(edges[0]), act_max=float(edges[-1]), std=unit_std(session, unit_id, activations))
    session.add(study)
    session.flush()
    order = rng.permutation(len(picks))
    # rows are inserted in display order, so item ids carry no trace of the bucket either
    session.add_all(StudyItem(study_id=study.id, image_id=rows[picks[i][0]][0], activation=float(
        activations[picks[i][0]]), bucket=picks[i][1], position=pos) for pos, i in enumerate(order))
    session.commit()
    return study


def get_study(session: Session, study_id: int) -> Study:
    # an id past the integer column's range is simply absent (SQLite/Postgres would raise on it)
    study = session.get(Study, study_id) if 0 < study_id < 2**31 else None
    if study is None:
        recent = session.scalars(select(Study).order_by(Study.id.desc()).limit(20)).all()
        have = ", ".join(f"{s.id} ({s.name})" for s in recent) or "none yet"
        raise NotFound(f"No study {study_id}. Recent studies: {have}.", [(s.name, urls.study(s.id)) for s in recent])
    return study


def unit_studies(session: Session, unit_id: int) -> list[Study]:
    return list(session.scalars(select(Study).where(Study.unit_id == unit_id).order_by(Study.id.desc())))


def study_items(session: Session, study: Study) -> list[StudyItem]:
    return list(session.scalars(select(StudyItem).options(joinedload(StudyItem.image))
                                .where(StudyItem.study_id == study.id).order_by(StudyItem.position)))


def study_labels(session: Session, study: Study) -> dict[str, dict[int, str]]:
    """labeller -> {item id: category}."""
    rows = session.execute(
        select(StudyLabel.labeller, StudyLabel.item_id, StudyLabel.category)
        .join(StudyItem, StudyLabel.item_id == StudyItem.id).where(StudyItem.study_id == study.id)
        .order_by(StudyLabel.created_at, StudyLabel.item_id)
    ).all()
    out: dict[str, dict[int, str]] = {}
    for labeller, item_id, category in rows:
        out.setdefault(labeller, {})[item_id] = category
    return out


def progress(session: Session, study: Study) -> dict[str, int]:
    """labeller -> number of items labelled, first labeller first."""
    return {name: len(done) for name, done in study_labels(session, study).items()}


def next_items(session: Session, study: Study, labeller: str | None, limit: int,
               review: bool = False) -> list[StudyItem]:
    """The labeller's next unlabelled items in display order (every item when reviewing)."""
    items = study_items(session, study)
    if review:
        return items
    done = study_labels(session, study).get(labeller, {}) if labeller else {}
    return [it for it in items if it.id not in done][:limit]


def save_answers(session: Session, study: Study, labeller: str, answers: dict[int, str]) -> int:
    """Store a labeller's categories for items given by display position; commit; return how many.

    An empty category clears the labeller's answer for that item. Unknown positions or categories
    raise StudyError naming what the study has, and nothing is saved."""
    labeller = clean_name(labeller, "a labeller name")
    by_position = {it.position: it for it in study_items(session, study)}
    categories = {c.casefold(): c for c in study.categories}
    resolved: dict[int, str | None] = {}
    for position, category in answers.items():
        if position not in by_position:
            raise StudyError(f"item {position} is not in this study (items 0–{len(by_position) - 1})")
        category = (category or "").strip()
        if category and category.casefold() not in categories:
            raise StudyError(f"category {category!r} is not in this study; its categories: "
                             f"{', '.join(study.categories)}")
        resolved[by_position[position].id] = categories[category.casefold()] if category else None
    for item_id, category in resolved.items():
        row = session.get(StudyLabel, (item_id, labeller))
        if category is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(StudyLabel(item_id=item_id, labeller=labeller, category=category))
        else:
            row.category = category
    try:
        session.commit()
    except IntegrityError:  # the same labeller answering in two tabs at once: keep the first
        session.rollback()
        raise StudyError("these items were just labelled from another window; reload and try again") from None
    return sum(1 for c in resolved.values() if c)


def add_category(session: Session, study: Study, name: str) -> Study:
    name = clean_name(name, "a category")
    study.categories = clean_categories([*study.categories, name])
    session.commit()
    return study
