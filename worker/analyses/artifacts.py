"""Layer-wide results kept as files in the cache with an `artifacts` row (word and place matrices, the map
grid, the region report), and the small store look-ups the stages that write them share."""
import io
import json

import numpy as np
from sqlalchemy import select

from store.schema import Artifact, Layer, Model, Unit
from store.writes import Store
from worker.compute.models import LoadedModel


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def ensure_model(store: Store, loaded: LoadedModel, model_name: str) -> None:
    """Register the model (and its layers' unit rows) under `model_name` if the store lacks it."""
    from store.writes import register_model
    from worker.compute.layers import catalogue

    with store.sessions.begin() as session:
        if session.scalar(select(Model).where(Model.name == model_name)) is None:
            register_model(session, model_name, loaded.arch, loaded.weights, loaded.image_size, catalogue(loaded),
                           load=loaded.record())


def layer_units(session, model_name: str, layer: str) -> tuple[Model, Layer, list[Unit]]:
    model = session.scalar(select(Model).where(Model.name == model_name))
    la = next((x for x in model.layers if x.name == layer), None)
    if la is None:
        raise ValueError(f"model {model_name} has no layer {layer!r} in the store")
    units = session.scalars(select(Unit).where(Unit.layer_id == la.id).order_by(Unit.index)).all()
    return model, la, list(units)


def put_artifact(store: Store, model_name: str, layer: str, name: str, path: str, meta: dict,
                 run_id: int | None) -> None:
    with store.sessions.begin() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        row = session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == layer,
                                                    Artifact.name == name))
        if row is None:
            row = Artifact(model_id=model.id, layer=layer, name=name, path=path)
            session.add(row)
        row.path, row.meta, row.run_id = path, meta, run_id


def write_matrix(store: Store, model_name: str, layer: str, name: str, texts: list[str], matrices: dict,
                 meta: dict, run_id: int | None) -> dict:
    """Save texts (.json) and matrices (.npy) under artifacts/<model>/<layer>/ and point an Artifact row at them.
    File names carry the settings hash, so a server holding the old matrix in memory never reads half a file."""
    base = f"artifacts/{model_name}/{layer}/{name}-{meta['hash']}"
    paths = {"texts": store.cache.write(f"{base}.json", json.dumps(texts).encode())}
    for key, array in matrices.items():
        paths[key] = store.cache.write(f"{base}.{key}.npy", npy_bytes(array.astype(np.float32)))
    meta = {**meta, "paths": paths, "n_texts": len(texts)}
    put_artifact(store, model_name, layer, name, paths["post"], meta, run_id)
    return meta


def artifact(store: Store, model_name: str, layer: str, name: str) -> Artifact | None:
    with store.sessions() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        if model is None:
            return None
        return session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == layer,
                                                     Artifact.name == name))


def load_matrix(store: Store, meta: dict, key: str = "post") -> np.ndarray:
    return np.load(store.cache.resolve(meta["paths"][key]))
