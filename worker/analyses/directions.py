"""Saved concept directions (the curated `directions` table, app/directions.py for what a direction is):
for each, a feature visualization of the direction in its layer, and its top and bottom images put into
the image store so its page shows them as pictures.

The direction is computed here as the page computes it (the same parser, the model's own text tower and
read-out), and rendered with the feature-visualization objective `direction` (spatial mean of the
activations, dotted with d). Each result is an Artifact row `direction-featurevis:<id>`; a direction
whose query and model are unchanged is skipped.
"""
import hashlib

import numpy as np
from sqlalchemy import select

from app.directions import canonical, combine, extremes, parse
from store.schema import Artifact, Direction, Model
from store.writes import Store

STAGE = "directions"
EXAMPLES = 12


def direction_in_layer(loaded, query: str) -> np.ndarray:
    """d = W Σ ±embed(text) (units,), float32: the page's direction, from the worker's model."""
    from worker.compute.readout import embed_texts, readout_matrix

    terms = parse(query)
    embeddings = embed_texts(loaded, [text for _, text in terms])
    return (readout_matrix(loaded) @ combine(terms, list(embeddings))).astype(np.float32)


def render_direction(loaded, layer: str, d: np.ndarray, steps: int, seed: int = 0):
    """One feature visualization (PIL image) maximising the direction, and its objective value."""
    import torch
    from PIL import Image

    from worker.compute.featurevis import objectives
    from worker.compute.featurevis.render import RenderSettings, render

    out = render(loaded, objectives.direction(layer, torch.from_numpy(d)), [seed], RenderSettings(steps=steps))
    pixels = (out.images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    return Image.fromarray(pixels), float(out.objective[0])


def saved_directions(store: Store, model_name: str) -> list[Direction]:
    with store.sessions() as session:
        rows = session.scalars(select(Direction).join(Model, Direction.model_id == Model.id)
                               .where(Model.name == model_name).order_by(Direction.id)).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def store_examples(store: Store, model_name: str, layer: str, d: np.ndarray, readout: np.ndarray,
                   k: int = EXAMPLES) -> int:
    """Put the direction's top and bottom matrix rows (scored as its page scores them) into the image store;
    how many were stored."""
    from app.activations import MatrixError
    from app.directions import image_scores, readout_norms
    from worker.analyses.activations import stored_matrix
    from worker.analyses.images import store_images

    try:
        matrix = stored_matrix(store, model_name, layer)
    except MatrixError:
        return 0
    rectify = matrix.meta[0].get("signal") == "pre-relu"
    top, bottom = extremes(image_scores(matrix, d, readout_norms(matrix, readout, rectify), rectify), k)
    entries = matrix.entries
    return len(store_images(store, matrix.corpus, {int(entries[r]) for r in top + bottom}))


def run_directions(store: Store, loaded, model_name: str, steps: int = 512, force: bool = False) -> dict:
    """Render every saved direction of the model that has none yet (or whose query changed)."""
    from store.writes import recorded_run
    from worker.compute.readout import readout_matrix

    report = {"directions": 0, "rendered": 0, "skipped": 0, "images": 0}
    todo = saved_directions(store, model_name)
    if not todo:
        return report
    with recorded_run(store, STAGE, model_name, {"steps": steps}) as run:
        for row in todo:
            report["directions"] += 1
            digest = hashlib.sha256(f"{canonical(parse(row.query))}|{loaded.weights}|{steps}".encode()).hexdigest()[:16]
            if not force and current_digest(store, row) == digest:
                report["skipped"] += 1
                continue
            d = direction_in_layer(loaded, row.query)
            image, value = render_direction(loaded, row.layer, d, steps)
            report["images"] += store_examples(store, model_name, row.layer, d, readout_matrix(loaded))
            put_render(store, row, store.cache.put_image(image, fmt="png"),
                       {"digest": digest, "objective": value, "steps": steps, "query": row.query}, run["run_id"])
            report["rendered"] += 1
        run.update(report)
    return report


def artifact_name(row: Direction) -> str:
    return f"direction-featurevis:{row.id}"


def current_digest(store: Store, row: Direction) -> str | None:
    with store.sessions() as session:
        art = session.scalar(select(Artifact).where(Artifact.model_id == row.model_id, Artifact.layer == row.layer,
                                                    Artifact.name == artifact_name(row)))
        return (art.meta or {}).get("digest") if art is not None else None


def put_render(store: Store, row: Direction, path: str, meta: dict, run_id: int) -> None:
    with store.sessions.begin() as session:
        art = session.scalar(select(Artifact).where(Artifact.model_id == row.model_id, Artifact.layer == row.layer,
                                                    Artifact.name == artifact_name(row)))
        if art is None:
            art = Artifact(model_id=row.model_id, layer=row.layer, name=artifact_name(row), path=path)
            session.add(art)
        art.path, art.meta, art.run_id = path, meta, run_id
