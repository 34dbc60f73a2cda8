"""Neuron families (the paper's figure 1): an editable list, and which neurons belong to each.

Membership has a source: "human" (added by an editor) or "auto" (the worker's suggestion); the two
are stored side by side and never merged. Every human change is logged in curation_events.
"""
import re
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import urls
from app.lookup import NotFound
from app.unit_text import refresh_unit_text
from store.keys import UnitKey
from store.schema import CurationEvent, Family, Layer, Model, Unit, UnitFamily

NAME_RE = re.compile(r"^[^\W_][\w &'+-]{0,63}$")


class Conflict(Exception):
    """A write that would overwrite or destroy something (answered with 409)."""


def check_family_name(name: str) -> str:
    name = " ".join(name.split())
    if not NAME_RE.match(name):
        raise ValueError("a family name is 1–64 letters, digits, spaces and & ' + - (starting with a letter "
                         f"or digit), got {name!r}")
    return name


def _norm(name: str) -> str:
    return " ".join(name.replace("-", " ").replace("_", " ").split()).casefold()


def list_families(session: Session) -> list[Family]:
    return list(session.scalars(select(Family).order_by(Family.position, Family.name)))


def get_family(session: Session, name: str) -> Family:
    """A family by name (case and -/_/space insensitive); NotFound names the families that exist."""
    families = list_families(session)
    for family in families:
        if _norm(family.name) == _norm(name):
            return family
    names = ", ".join(f.name for f in families) or "none yet"
    raise NotFound(f"No family {name!r}. Families: {names}.", [(f.name, urls.family(f.name)) for f in families])


def log_event(session: Session, action: str, author: str, family: str = "", unit_id: int | None = None,
              detail: str = "") -> None:
    session.add(CurationEvent(unit_id=unit_id, family=family, action=action, detail=detail, author=author))


def create_family(session: Session, name: str, description: str, author: str) -> Family:
    """Add a family at the end of the list and commit; Conflict if the name (or a near twin) exists."""
    name = check_family_name(name)
    existing = [f.name for f in list_families(session) if _norm(f.name) == _norm(name)]
    if existing:
        raise Conflict(f"Family {existing[0]!r} already exists.")
    position = (session.scalar(select(func.max(Family.position))) or 0) + 1
    family = Family(name=name, description=description.strip(), position=position)
    session.add(family)
    log_event(session, "family-create", author, family=name, detail=description.strip())
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"Family {name!r} already exists.") from None
    return family


def describe_family(session: Session, family: Family, description: str, author: str) -> Family:
    old = family.description
    family.description = description.strip()
    log_event(session, "family-edit", author, family=family.name, detail=f"was: {old}")
    session.commit()
    return family


def unit_families(session: Session, unit_id: int) -> list[UnitFamily]:
    return list(session.scalars(
        select(UnitFamily).join(Family, UnitFamily.family_id == Family.id)
        .where(UnitFamily.unit_id == unit_id).order_by(UnitFamily.source.desc(), Family.position)
    ))


def add_member(session: Session, unit_id: int, family: Family, author: str) -> bool:
    """Put a neuron in a family (human membership) and commit; False if it already was."""
    if session.get(UnitFamily, (unit_id, family.id, "human")) is not None:
        return False
    session.add(UnitFamily(unit_id=unit_id, family_id=family.id, source="human", author=author))
    log_event(session, "family-add", author, family=family.name, unit_id=unit_id)
    try:
        session.flush()
        refresh_unit_text(session, unit_id)
        session.commit()
    except IntegrityError:  # added by someone else a moment ago
        session.rollback()
        return False
    return True


def remove_member(session: Session, unit_id: int, family: Family, author: str) -> None:
    """Take a neuron out of a family (human membership only) and commit; NotFound if it was not in it."""
    row = session.get(UnitFamily, (unit_id, family.id, "human"))
    if row is None:
        names = ", ".join(uf.family.name for uf in unit_families(session, unit_id) if uf.source == "human")
        raise NotFound(f"This neuron is not in family {family.name!r} (its families: {names or 'none'}).")
    session.delete(row)
    log_event(session, "family-remove", author, family=family.name, unit_id=unit_id)
    session.flush()
    refresh_unit_text(session, unit_id)
    session.commit()


def set_auto_families(session: Session, unit_id: int, guesses: dict[str, float]) -> None:
    """Replace the worker's family suggestions for one neuron (human memberships are untouched)."""
    session.execute(delete(UnitFamily).where(UnitFamily.unit_id == unit_id, UnitFamily.source == "auto"))
    by_name = {f.name: f for f in list_families(session)}
    for name, score in guesses.items():
        session.add(UnitFamily(unit_id=unit_id, family_id=by_name[name].id, source="auto", author="worker",
                               score=score))
    session.flush()


def unit_events(session: Session, unit_id: int, limit: int = 100) -> list[CurationEvent]:
    return list(session.scalars(
        select(CurationEvent).where(CurationEvent.unit_id == unit_id)
        .order_by(CurationEvent.created_at.desc(), CurationEvent.id.desc()).limit(limit)
    ))


@dataclass
class Member:
    key: UnitKey
    unit_id: int
    source: str
    score: float | None
    author: str


def members(session: Session, family: Family, source: str, offset: int = 0, limit: int | None = None,
            exclude_human: bool = False) -> tuple[list[Member], int]:
    """A family's neurons of one source (auto ones by score), with the total count."""
    query = (
        select(UnitFamily, Unit.index, Layer.name, Model.name)
        .join(Unit, UnitFamily.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
        .join(Model, Layer.model_id == Model.id)
        .where(UnitFamily.family_id == family.id, UnitFamily.source == source)
    )
    if exclude_human:
        human = select(UnitFamily.unit_id).where(UnitFamily.family_id == family.id, UnitFamily.source == "human")
        query = query.where(UnitFamily.unit_id.not_in(human))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    order = [UnitFamily.score.desc(), Model.name, Layer.position, Unit.index] if source == "auto" else [
        Model.name, Layer.position, Unit.index]
    rows = session.execute(query.order_by(*order).offset(offset).limit(limit)).all()
    return [Member(UnitKey(m, la, i), uf.unit_id, uf.source, uf.score, uf.author) for uf, i, la, m in rows], total


def member_counts(session: Session) -> dict[int, dict[str, int]]:
    """family id -> {"human": n, "auto": n}."""
    rows = session.execute(
        select(UnitFamily.family_id, UnitFamily.source, func.count()).group_by(UnitFamily.family_id, UnitFamily.source)
    ).all()
    out: dict[int, dict[str, int]] = {}
    for fid, source, n in rows:
        out.setdefault(fid, {"human": 0, "auto": 0})[source] = n
    return out
