"""Find models, layers and neurons by their URL names; a miss says what does exist."""
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.keys import KeyError_, UnitKey, parse_unit
from store.schema import Layer, Model, Unit


class NotFound(Exception):
    def __init__(self, message: str, links: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.links = links or []  # (text, url) of what exists instead


def get_model(session: Session, name: str) -> Model:
    from app import urls

    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        names = session.scalars(select(Model.name).order_by(Model.name)).all()
        have = ", ".join(names) if names else "none yet (run the worker)"
        raise NotFound(f"No model {name!r}. Models in this store: {have}.", [(n, urls.model(n)) for n in names])
    return model


def get_layer(session: Session, model_name: str, layer_name: str) -> Layer:
    from app import urls

    model = get_model(session, model_name)
    for layer in model.layers:
        if layer.name == layer_name:
            return layer
    names = [la.name for la in model.layers]
    raise NotFound(
        f"Model {model.name} has no layer {layer_name!r}. Its layers: {', '.join(names) or 'none yet'}.",
        [(n, urls.layer(model.name, n)) for n in names],
    )


def unit_range_text(layer: Layer) -> str:
    return range_text(layer.model.name, layer.name, layer.n_units)


def range_text(model_name: str, layer_name: str, n_units: int) -> str:
    return f"{model_name} {layer_name} has units 0–{n_units - 1}"


def get_unit(session: Session, model_name: str, layer_name: str, unit_text: str) -> tuple[Layer, Unit]:
    """The layer and unit row; raises KeyError_ (422) for a non-number, NotFound (404) out of range."""
    from app import urls

    layer = get_layer(session, model_name, layer_name)
    try:
        index = parse_unit(unit_text)
    except KeyError_ as e:
        raise KeyError_(f"{e}. {unit_range_text(layer)}.") from None
    unit = None
    if index < layer.n_units:
        unit = session.scalar(select(Unit).where(Unit.layer_id == layer.id, Unit.index == index))
    if unit is None:
        raise NotFound(
            f"No unit {index}: {unit_range_text(layer)}.",
            [(f"{layer.name} grid", urls.layer(model_name, layer_name))],
        )
    return layer, unit


def key_of(layer: Layer, unit: Unit) -> UnitKey:
    return UnitKey(layer.model.name, layer.name, unit.index)


def unit_by_key(session: Session, key: UnitKey) -> Unit | None:
    return session.scalar(
        select(Unit)
        .join(Layer, Unit.layer_id == Layer.id)
        .join(Model, Layer.model_id == Model.id)
        .where(Model.name == key.model, Layer.name == key.layer, Unit.index == key.unit)
    )


def count_units(session: Session, layer: Layer) -> int:
    return session.scalar(select(func.count()).select_from(Unit).where(Unit.layer_id == layer.id)) or 0
