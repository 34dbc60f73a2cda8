"""Saved concept directions (the curated `directions` table, app/directions.py for what a direction is):
for each, a feature visualization of the direction in its layer, and its top and bottom images put into
the image store so its page shows them as pictures.

The direction is computed here as the page computes it (the same parser, the model's own text tower and
read-out), and rendered with the feature-visualization objective `direction` (spatial mean of the
activations, dotted with d). Each result is an Artifact row `direction-featurevis:<id>`; a direction
whose query and model are unchanged is skipped. The directions stage (worker/stages/directions.py) runs it.
"""
import hashlib

import numpy as np
from sqlalchemy import select

from app.directions import canonical, combine, extremes, parse
from store.schema import Artifact, Direction, Model
from store.writes import Store

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


def direction_digest(row: Direction, weights, steps: int) -> str:
    """What a render depends on: the direction's canonical query, the weights and the steps."""
    return hashlib.sha256(f"{canonical(parse(row.query))}|{weights}|{steps}".encode()).hexdigest()[:16]


def compute_directions(store: Store, loaded, model_name: str, steps: int = 512, force: bool = False) -> dict:
    """Render every saved direction of the model that has no render of its current digest (all with `force`);
    writes nothing: {"renders": [(row, d, image, meta)], "skipped": n, "directions": n}."""
    todo, renders, skipped = saved_directions(store, model_name), [], 0
    for row in todo:
        digest = direction_digest(row, loaded.weights, steps)
        if not force and current_digest(store, row) == digest:
            skipped += 1
            continue
        d = direction_in_layer(loaded, row.query)
        image, value = render_direction(loaded, row.layer, d, steps)
        renders.append((row, d, image, {"digest": digest, "objective": value, "steps": steps, "query": row.query}))
    return {"renders": renders, "skipped": skipped, "directions": len(todo)}


def write_directions(store: Store, loaded, model_name: str, computed: dict, run_id: int) -> dict:
    """Store `compute_directions`' renders and each direction's top and bottom images; the report."""
    from worker.compute.readout import readout_matrix

    report = {"directions": computed["directions"], "rendered": 0, "skipped": computed["skipped"], "images": 0}
    readout = readout_matrix(loaded) if computed["renders"] else None
    for row, d, image, meta in computed["renders"]:
        report["images"] += store_examples(store, model_name, row.layer, d, readout)
        put_render(store, row, store.cache.put_image(image, fmt="png"), meta, run_id)
        report["rendered"] += 1
    return report


def saved_digest(store: Store, model_name: str) -> str:
    """The saved directions (id, layer, canonical query), as one digest: a stage setting, so saving one reruns."""
    rows = [f"{r.id}|{r.layer}|{canonical(parse(r.query))}" for r in saved_directions(store, model_name)]
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


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
