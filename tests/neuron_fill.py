"""Neurons with every section of their card filled (test data): what the stages and the curation pages write,
written directly so page and export tests see every table at once without running a model.

`rich_store(store)` = worker.synthetic.populate (feature vis, examples, words, stats) of model "synth" plus, on
units 0 and 1 of layer4, map grids, all 177 country and 30 city scores, activation samples, labels, families,
a labelled study and a regions report."""
import numpy as np
from sqlalchemy import select

from app.db import ActivationSample, Artifact, Family, MapActivation, Model, PlaceScore
from app.families import add_member, get_family, set_auto_families
from app.heatmaps import quantize_grid
from app.labelling import append_auto_label, save_label
from app.studies import create_study, save_answers
from worker.synthetic import Material, populate

N_COUNTRIES, N_CITIES = 177, 30
RICH = (0, 1)  # the fully filled units of layer4


def place_scores(unit_id: int, index: int) -> list[PlaceScore]:
    rng = np.random.default_rng(index)
    rows = [PlaceScore(unit_id=unit_id, kind="country", name=f"Country {i:03d}", code=f"C{i:03d}",
                       score=float(rng.normal())) for i in range(N_COUNTRIES)]
    return rows + [PlaceScore(unit_id=unit_id, kind="city", name=f"City {i:02d}", code="C000", lat=i - 10.0,
                              lon=2.0 * i, score=float(rng.normal())) for i in range(N_CITIES)]


def fill_worker_side(s, material: Material, unit_id: int, index: int) -> None:
    grid = np.array([[index, 1.5], [2.5, -index]], dtype=np.float32)
    s.add(MapActivation(unit_id=unit_id, **quantize_grid(grid), choropleth=f"maps/{index}-c.png"))
    s.add_all(place_scores(unit_id, index))
    s.add_all(ActivationSample(unit_id=unit_id, image_id=image_id, activation=float(i) + index)
              for i, image_id in enumerate(material.image_ids))


def fill_curation(s, unit_id: int, index: int) -> None:
    """Two human label versions and an auto one, a human and two auto families, a study labelled by two people."""
    save_label(s, unit_id, f"first idea {index}", "ann", None)
    save_label(s, unit_id, f"maps and places {index}", "bob", 1)
    append_auto_label(s, unit_id, f"auto guess {index}", "worker")
    add_member(s, unit_id, get_family(s, "Geography"), "ann")
    set_auto_families(s, unit_id, {"Emotion": 0.25, "Region": 0.75})
    s.commit()
    study = create_study(s, unit_id, "faces?", ["face", "other"], 2, 3, "ann")
    save_answers(s, study, "ann", {0: "face", 1: "other"})
    save_answers(s, study, "cy", {0: "face"})


def rich_store(store, model: str = "synth") -> Material:
    material = populate(store, model, {"layer4": 6, "layer3": 2})
    with store.sessions.begin() as s:
        s.add(Family(name="Geography", position=100, description="places (a family the test adds)"))
        model_id = s.scalar(select(Model.id).where(Model.name == model))
        s.add(Artifact(model_id=model_id, layer="layer4", name="regions", path="regions.json",
                       meta={"units": [{"unit": u, "fraction": 0.6, "geographic": ["paris", "texas"]} for u in RICH]}))
    for uid, key in material.units:
        if key.layer == "layer4" and key.unit in RICH:
            with store.sessions.begin() as s:
                fill_worker_side(s, material, uid, key.unit)
            with store.sessions() as s:
                fill_curation(s, uid, key.unit)
    return material

