"""Concept directions: the expression parser, and the page through real HTTP on a real tiny model whose
examples equal a brute-force projection of the activation matrix; saved directions get rendered."""
import numpy as np
import pytest

from app.directions import DirectionError, canonical, parse
from tests.test_examples import make_corpus
from worker.analyses.activations import stored_matrix
from worker.analyses.examples import ExampleOptions, run_examples
from worker.compute.readout import embed_texts, readout_matrix

AUTH = {"Authorization": "Bearer test-token"}


def test_expressions_parse_to_signed_terms_and_one_canonical_form():
    assert parse("king - man + woman") == [(1, "king"), (-1, "man"), (1, "woman")]
    assert parse('  a photo of a  dog -"t-shirt"') == [(1, "a photo of a dog"), (-1, "t-shirt")]
    assert canonical(parse("-dog+cat")) == "- dog + cat"
    assert canonical(parse('"t-shirt"  +red')) == '"t-shirt" + red'
    for bad, reason in [("", "empty"), ("dog + + cat", "two operators"), ("dog -", "ends with"),
                        ('"dog', "unbalanced"), ('dog + ""', "empty quoted"), ("dog " * 0 + "a+" * 9 + "a", "at most"),
                        ("x" * 101, "at most 100")]:
        with pytest.raises(DirectionError, match=reason):
            parse(bad)


@pytest.fixture
def direction_store(store, probe_model, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=26, bad=False)
    run_examples(store, probe_model, "tiny", corpus, ["layer4"], ExampleOptions(k=4, workers=0, progress=False,
                                                                                samples=0))
    return store


def brute_force(loaded, store, terms):
    e = embed_texts(loaded, [t for _, t in terms])
    v = sum(s * e[i] for i, (s, _) in enumerate(terms))
    d = readout_matrix(loaded) @ v
    dense = np.maximum(stored_matrix(store, "tiny", "layer4").dense(), 0)  # pre-ReLU values, rectified
    return dense @ d / np.linalg.norm(dense @ readout_matrix(loaded), axis=1), d, v


def test_direction_examples_equal_a_brute_force_cosine_of_the_readout_embedding(direction_store, probe_model, client):
    r = client.get("/models/tiny/layer4/direction.json", params={"q": "  dog   -cat", "k": 5})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["q"] == "dog - cat" and data["share_url"].endswith("/models/tiny/layer4/direction?q=dog+-+cat")
    values, d, v = brute_force(probe_model, direction_store, [(1, "dog"), (-1, "cat")])
    assert [e["row"] for e in data["examples"]["top"]] == list(np.argsort(-values, kind="stable")[:5])
    assert [e["row"] for e in data["examples"]["bottom"]] == list(np.argsort(values, kind="stable")[:5])
    assert np.allclose([e["score"] for e in data["examples"]["top"]], np.sort(values)[::-1][:5], rtol=1e-3, atol=1e-3)
    assert sum(e["image"] is not None for e in data["examples"]["top"]) >= 1  # stored examples show as pictures
    w = readout_matrix(probe_model)
    cos = w @ v / np.linalg.norm(w, axis=1) / np.linalg.norm(v)
    assert [c["unit"] for c in data["nearest"]] == list(np.argsort(-cos, kind="stable")[:5])
    assert data["best_unit"]["unit"] == int(np.argmax(d)) and len(data["best_unit"]["top"]) == 5
    page = client.get("/models/tiny/layer4/direction", params={"q": "dog - cat"})
    assert page.status_code == 200 and "Its best single unit" in page.text and "Nearest units" in page.text


def test_bad_directions_say_why(direction_store, client):
    assert client.get("/models/tiny/nope/direction.json", params={"q": "dog"}).status_code == 404
    r = client.get("/models/tiny/layer1/direction.json", params={"q": "dog"})
    assert r.status_code == 404 and "read-out" in r.json()["error"] and "layer4" in r.json()["error"]
    for q in ["dog + + cat", '"dog', "cat -"]:
        r = client.get("/models/tiny/layer4/direction.json", params={"q": q})
        assert r.status_code == 422 and "Invalid direction" in r.json()["error"], q
    assert client.get("/models/tiny/layer4/direction.json", params={"q": "x" * 501}).status_code == 422
    assert client.get("/models/tiny/layer4/direction").status_code == 200  # the empty form


def test_a_saved_direction_gets_a_feature_visualization_from_the_pipeline(direction_store, probe_model, client):
    """The directions stage: nothing to render while none is saved; saving one reruns it and renders it; up
    to date after; saving another reruns it and renders only the new one."""
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import last_done, run_pipeline

    ctx = BuildContext(direction_store, probe_model, "tiny", None, ("layer4",), {"directions": {"steps": 4}}, (),
                       progress=False)

    def build() -> tuple[str, str]:
        (got,) = run_pipeline(ctx, only=["directions"], echo=lambda _: None)
        return got.status, got.reason

    assert build() == ("done", "") and last_done(ctx, "directions").report["directions"] == 0
    assert build() == ("skipped", "up to date")
    assert client.post("/models/tiny/layer4/directions", json={"q": "dog"}).status_code == 401
    r = client.post("/models/tiny/layer4/directions", json={"q": " dog ", "name": "Dog"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["q"] == "dog"
    assert build() == ("done", "")
    report = last_done(ctx, "directions").report
    assert report["rendered"] == 1 and report["images"] > 0
    assert build() == ("skipped", "up to date")
    assert client.post("/models/tiny/layer4/directions", json={"q": "cat", "name": "Cat"},
                       headers=AUTH).status_code == 201
    assert build() == ("done", "")
    report = last_done(ctx, "directions").report
    assert report["rendered"] == 1 and report["skipped"] == 1
    data = client.get("/models/tiny/layer4/direction.json", params={"q": "dog"}).json()
    assert data["this_saved"]["name"] == "Dog" and data["featurevis"].startswith("/cache/")
    assert client.get(data["featurevis"]).status_code == 200
    assert {"name": "Dog", "q": "dog", "url": "/models/tiny/layer4/direction?q=dog"} in data["saved"]


def test_the_query_divides_by_the_norms_the_worker_wrote_and_falls_back_without_them(direction_store, probe_model,
                                                                                      client, tmp_path):
    """The examples stage leaves |Wᵀa| per row beside the matrix (recorded in its artifact); the app divides by
    that file (planted values show in its scores), and a store without it still gets brute-force scores, from
    one scan of the app's own that it never writes back."""
    import torch

    from app.activations import readout_digest
    from app.directions import PROJECTIONS
    from tests.conftest import CONFIG_DIR
    from worker.analyses.artifacts import artifact
    from worker.analyses.attribution import store_readout

    matrix = stored_matrix(direction_store, "tiny", "layer4")
    sidecar = matrix.folder / "readout-norms.f32"
    rectified = np.maximum(matrix.dense(), 0)
    w = readout_matrix(probe_model)
    record = artifact(direction_store, "tiny", "layer4", "activations").meta["readout_norms"]
    assert record["readout"] == readout_digest(w) and record["rows"] == matrix.rows and record["rectified"]
    assert np.allclose(np.fromfile(sidecar, np.float32), np.linalg.norm(rectified @ w, axis=1), rtol=1e-5)

    sidecar.write_bytes(np.full(matrix.rows, 2.0, np.float32).tobytes())
    values, d, _ = brute_force(probe_model, direction_store, [(1, "dog")])
    top = client.get("/models/tiny/layer4/direction.json", params={"q": "dog", "k": 5}).json()["examples"]["top"]
    assert np.allclose([e["score"] for e in top], np.sort(rectified @ d)[::-1][:5] / 2, rtol=1e-3, atol=1e-3)

    sidecar.unlink()
    PROJECTIONS.clear()
    top = client.get("/models/tiny/layer4/direction.json", params={"q": "dog", "k": 5}).json()["examples"]["top"]
    assert [e["row"] for e in top] == list(np.argsort(-values, kind="stable")[:5]) and not sidecar.exists()

    size = probe_model.image_size
    other = store_readout(direction_store, "tiny", probe_model, [CONFIG_DIR], torch.rand(2, 3, size, size), "autograd")
    new_w = np.load(direction_store.cache.resolve(other.path))
    assert readout_digest(new_w) != readout_digest(w)  # another read-out: the sidecar is redone for it
    assert artifact(direction_store, "tiny", "layer4", "activations").meta["readout_norms"]["readout"] == \
        readout_digest(new_w)
    assert np.allclose(np.fromfile(sidecar, np.float32), np.linalg.norm(rectified @ new_w, axis=1), rtol=1e-5)
