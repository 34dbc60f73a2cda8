"""Neuron labels: an append-only history per (unit, source); the newest version is the current label.

An edit names the version it was based on (optimistic concurrency): if someone else wrote a newer
version meanwhile, the edit is refused with `StaleEdit` carrying the current label, and nothing is
overwritten. Human ("human") and automatic ("auto") labels are separate histories.
"""
import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.unit_text import refresh_unit_text
from store.schema import Label

MAX_LABEL = 200
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SOURCES = ("human", "auto")


class StaleEdit(Exception):
    """The edit was based on an older version than the current one."""

    def __init__(self, current: Label | None, based_on: int | None):
        have = current.version if current else "none"
        super().__init__(f"This label changed meanwhile: your edit was based on version {based_on or 'none'}, "
                         f"the current version is {have}.")
        self.current = current
        self.based_on = based_on


def clean_label(text: str) -> str:
    """Collapse whitespace; refuse control characters, empty and over-long labels (ValueError)."""
    if CONTROL.search(text.replace("\n", " ").replace("\t", " ")):
        raise ValueError("a label may not contain control characters")
    text = " ".join(text.split())
    if not text:
        raise ValueError("a label may not be empty")
    if len(text) > MAX_LABEL:
        raise ValueError(f"a label is at most {MAX_LABEL} characters, got {len(text)}")
    return text


def current_label(session: Session, unit_id: int, source: str = "human") -> Label | None:
    return session.scalar(
        select(Label).where(Label.unit_id == unit_id, Label.source == source)
        .order_by(Label.version.desc()).limit(1)
    )


def label_history(session: Session, unit_id: int, source: str | None = None, limit: int = 100) -> list[Label]:
    """Every version, newest first."""
    query = select(Label).where(Label.unit_id == unit_id)
    if source:
        query = query.where(Label.source == source)
    return list(session.scalars(query.order_by(Label.created_at.desc(), Label.version.desc()).limit(limit)))


def save_label(session: Session, unit_id: int, text: str, author: str, based_on: int | None,
               source: str = "human") -> Label:
    """Append a new version and commit; raise StaleEdit if `based_on` is not the current version."""
    current = current_label(session, unit_id, source)
    if (current.version if current else None) != based_on:
        raise StaleEdit(current, based_on)
    label = Label(unit_id=unit_id, source=source, version=(based_on or 0) + 1, text=clean_label(text),
                  author=author)
    session.add(label)
    try:
        session.flush()
        refresh_unit_text(session, unit_id)
        session.commit()
    except IntegrityError:  # a concurrent editor took this version number first
        session.rollback()
        raise StaleEdit(current_label(session, unit_id, source), based_on) from None
    return label


def append_auto_label(session: Session, unit_id: int, text: str, author: str) -> Label | None:
    """The worker's suggestion: a new "auto" version only when the text changed (no commit)."""
    current = current_label(session, unit_id, "auto")
    text = clean_label(text)
    if current is not None and current.text == text:
        return None
    label = Label(unit_id=unit_id, source="auto", version=(current.version if current else 0) + 1,
                  text=text, author=author)
    session.add(label)
    session.flush()
    return label
