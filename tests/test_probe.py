"""Live text probe: real HTTP through the app, the real tiny model loaded lazily on the probe thread."""
import threading
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app.probe import engine_of
from store.schema import Artifact, Model
from worker.compute.readout import text_attribution


def probe(client, **params):
    return client.get("/probe.json", params={"model": "tiny", **params})


def test_text_probe_ranks_neurons_by_attribution(probe_model, client):
    r = probe(client, q="a photo of a dog", k=5)
    assert r.status_code == 200, r.text
    data = r.json()
    expected = text_attribution(probe_model, ["a photo of a dog"])[0]  # computed here, in the test process
    assert [c["unit"] for c in data["positive"]] == list(np.argsort(-expected)[:5])
    assert [c["unit"] for c in data["negative"]] == list(np.argsort(expected)[:5])
    assert np.allclose([c["score"] for c in data["positive"]], np.sort(expected)[::-1][:5], atol=1e-4)
    top = data["positive"][0]
    assert top["key"] == f"tiny/layer4/{top['unit']}" and top["url"] == f"/models/tiny/layer4/{top['unit']}"
    assert data["layer"] == "layer4" and "attnpool" in data["method"]


def test_text_probe_page_shows_both_lists_and_the_same_neurons(probe_model, client):
    page = client.get("/probe", params={"model": "tiny", "q": "snow", "k": 3})
    assert page.status_code == 200 and "Most positive" in page.text and "Most negative" in page.text
    for card in probe(client, q="snow", k=3).json()["positive"]:
        assert f'href="{card["url"]}"' in page.text
    assert 'src="/static/probe.js' in page.text and "<script>" not in page.text


def test_form_without_text_lists_models_and_needs_no_model_load(probe_model, client):
    r = client.get("/probe.json")
    assert r.status_code == 200
    assert [m["name"] for m in r.json()["models"]] == ["tiny"] and r.json()["positive"] == []
    assert getattr(client.app.state, "probe", None) is None  # nothing loaded, no thread started


def test_model_loads_once_on_its_own_thread(probe_model, client):
    for q in ["red", "blue", "red"]:
        assert probe(client, q=q).status_code == 200
    engine = engine_of(client.app)
    assert len(engine._models) == 1
    assert any(t.name.startswith("probe-model") for t in threading.enumerate())
    assert engine._models[next(iter(engine._models))].result().model.training is False


def test_pages_answer_while_the_probe_thread_is_busy(probe_model, client):
    """A probe that cannot get the model in time says 'retry' (503 + Retry-After); other pages never wait."""
    engine = engine_of(client.app)
    engine.wait_s = 0.3
    gate = threading.Event()
    engine._submit(gate.wait, 30)  # the probe thread is now busy, as during a slow model load
    try:
        r = probe(client, q="busy")
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and "loading" in r.json()["error"]
        assert client.get("/").status_code == 200
        assert client.get("/models/tiny/layer4").status_code == 200
    finally:
        gate.set()
    engine.wait_s = 30
    assert probe(client, q="busy").status_code == 200  # the load went on and finished meanwhile


def test_model_without_readout_or_weights_says_so(toy_model, client):
    r = client.get("/probe.json", params={"model": "toy", "q": "dog"})
    assert r.status_code == 404 and "microscope worker attribution" in r.json()["error"]
    assert client.get("/probe.json", params={"model": "nope", "q": "dog"}).status_code == 404
    page = client.get("/probe")
    assert page.status_code == 200 and "No model in this store has a text read-out" in page.text


def test_registered_without_weights_is_409_with_the_reason(probe_model, store, client):
    with store.sessions.begin() as s:
        s.scalar(select(Model).where(Model.name == "tiny")).weights = None
    r = probe(client, q="dog")
    assert r.status_code == 409 and "without weights" in r.json()["error"]


def test_missing_weights_file_is_503_with_the_path(probe_model, store, client):
    with store.sessions() as s:
        weights = s.scalar(select(Model.weights).where(Model.name == "tiny"))
    Path(weights).unlink()
    r = probe(client, q="dog")
    assert r.status_code == 503 and weights in r.json()["error"]


def test_broken_checkpoint_is_503_not_500(probe_model, store, client):
    with store.sessions() as s:
        weights = s.scalar(select(Model.weights).where(Model.name == "tiny"))
    Path(weights).write_bytes(b"not a checkpoint")
    r = probe(client, q="dog")
    assert r.status_code == 503 and "could not be loaded" in r.json()["error"]


def test_missing_readout_file_is_503(probe_model, store, client):
    with store.sessions() as s:
        path = s.scalar(select(Artifact.path).where(Artifact.name == "readout"))
    store.cache.resolve(path).unlink()
    r = probe(client, q="dog")
    assert r.status_code == 503 and "microscope worker attribution" in r.json()["error"]


def test_bad_text_is_422(probe_model, client):
    assert probe(client, q="x" * 501).status_code == 422
    r = probe(client, q="dog\x07bell")
    assert r.status_code == 422 and "control characters" in r.json()["error"]
    assert probe(client, q="x" * 500).status_code == 200
    assert probe(client, q="dog", k=0).status_code == 422
    for hostile in ['"', "')) OR 1=1 --", "NEAR(a b)", "*", "(((", "🐶 🐱", "ümlaut café"]:
        assert probe(client, q=hostile).status_code == 200, hostile
