"""Word pages and the image-based word embedding over real HTTP: neighbours, arithmetic, masking, 404/422."""
import numpy as np
import pytest

from app.embeddings import EmbeddingError, WordSpace, parse_expression, shared_fragment
from worker.analyses.regions import run_regions
from worker.analyses.words import run_words
from worker.compute.render_text import RenderPlan

WORDS = ["king", "queen", "man", "woman", "paris", "france", "running", "eating", "singing", "walking",
         "the", "of", "red", "blue", "dog", "cat", "london", "japan", "music", "french"]


@pytest.fixture
def scored(store, tiny_rn):
    run_words(store, tiny_rn, "tiny", "layer2", words=WORDS, plan=RenderPlan(tiny_rn.image_size), batch_size=80)
    return store


def centred(store) -> np.ndarray:
    from store.schema import Artifact

    with store.sessions() as s:
        meta = s.query(Artifact).filter_by(name="words").one().meta
    m = np.load(store.cache.resolve(meta["paths"]["post"]))
    return m - m.mean(0)


def cosine(vecs: np.ndarray, v: np.ndarray) -> np.ndarray:
    return vecs @ v / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(v))


def test_neighbours_are_the_nearest_centred_vectors(scored, client):
    r = client.get("/embeddings/tiny/layer2/neighbours.json", params={"word": "King", "k": 5})
    assert r.status_code == 200, r.text
    got = r.json()["neighbours"]
    assert len(got) == 5 and "king" not in [n["word"] for n in got]
    vecs = centred(scored)
    sims = cosine(vecs, vecs[WORDS.index("king")])
    sims[WORDS.index("king")] = -np.inf
    assert [n["word"] for n in got] == [WORDS[i] for i in np.argsort(-sims, kind="stable")[:5]]
    assert [n["similarity"] for n in got] == pytest.approx(sorted(sims, reverse=True)[:5], abs=1e-5)


def test_arithmetic_adds_and_subtracts_word_vectors(scored, client):
    r = client.get("/embeddings/tiny/layer2/arithmetic.json", params={"expr": "king - man + woman", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["terms"] == [{"sign": "+", "word": "king"}, {"sign": "-", "word": "man"},
                             {"sign": "+", "word": "woman"}]
    vecs = centred(scored)
    target = vecs[WORDS.index("king")] - vecs[WORDS.index("man")] + vecs[WORDS.index("woman")]
    sims = cosine(vecs, target)
    for w in ("king", "man", "woman"):
        sims[WORDS.index(w)] = -np.inf
    assert [n["word"] for n in body["arithmetic"]] == [WORDS[i] for i in np.argsort(-sims, kind="stable")[:3]]


BAD = [
    ("neighbours", {"word": "zzyzx"}, "unknown word 'zzyzx'"),
    ("neighbours", {"word": "kingg"}, "did you mean king"),
    ("arithmetic", {"expr": "king - zzyzx"}, "unknown word 'zzyzx'"),
    ("arithmetic", {"expr": "king man"}, "missing + or -"),
    ("arithmetic", {"expr": "king +"}, "ends with an operator"),
    ("neighbours", {"word": "king", "k": 0}, "k"),
    ("neighbours", {}, "word"),
]


def test_bad_input_is_422_with_the_reason_and_missing_layers_404(scored, client):
    for path, params, reason in BAD:
        r = client.get(f"/embeddings/tiny/layer2/{path}.json", params=params)
        assert r.status_code == 422, (path, params)
        assert reason in r.json()["error"]
        assert client.get(f"/embeddings/tiny/layer2/{path}", params=params).status_code == 422  # HTML twin too
    r = client.get("/embeddings/tiny/layer3/neighbours.json", params={"word": "king"})
    assert r.status_code == 404 and "microscope worker words" in r.json()["error"]
    assert any(link["url"] == "/embeddings/tiny/layer2" for link in r.json()["links"])
    assert client.get("/embeddings/nomodel/layer2").status_code == 404


def test_word_page_lists_the_units_the_word_drives_most(scored, client):
    body = client.get("/words/queen.json").json()
    layer = body["layers"][0]
    assert (layer["model"], layer["layer"]) == ("tiny", "layer2")
    zs = [u["z"] for u in layer["units"]]
    assert len(zs) == 12 and zs == sorted(zs, reverse=True) and zs[0] > 0
    assert layer["units"][0]["url"].startswith("/models/tiny/layer2/")
    assert client.get("/words/queen").status_code == 200
    missing = client.get("/words/zzyzx.json")
    assert missing.status_code == 404 and "zzyzx" in missing.json()["error"]
    assert client.get("/words", params={"word": "Queen"}, follow_redirects=False).headers["location"] == "/words/queen"


def test_pages_render_and_the_neuron_card_links_its_words(scored, client):
    index = client.get("/words.json").json()
    assert index["layers"][0]["n_words"] == len(WORDS)
    page = client.get("/embeddings/tiny/layer2", params={"word": "dog", "expr": "king - man + woman"})
    assert page.status_code == 200 and 'name="expr"' in page.text and "<ol>" in page.text
    unit = client.get("/words/dog.json").json()["layers"][0]["units"][0]["unit"]
    card = client.get(f"/models/tiny/layer2/{unit}.json").json()["sections"]["words"]
    assert card["top"] and card["embedding_url"] == "/embeddings/tiny/layer2"
    assert "dog" in [w["word"] for w in card["top"]]


def test_region_report_and_page(scored, client):
    report = run_regions(scored, "tiny", "layer2")
    assert report["units_scored"] > 0
    body = client.get("/regions/tiny/layer2.json", params={"min_fraction": 0.2}).json()
    geo = {"paris", "france", "london", "japan", "french"}
    for u in body["units"]:
        assert u["fraction"] >= 0.2 and set(u["geographic"]) <= geo and set(u["geographic"]) <= set(u["top5"])
        assert u["fraction"] == len(u["geographic"]) / len(u["top5"])
    assert body["units"], "with 5 geographic words of 20, some unit has one in its top 5"
    assert client.get("/regions/tiny/layer2").status_code == 200
    assert client.get("/regions/tiny/layer3.json").status_code == 404
    assert client.get("/regions/tiny/layer2.json", params={"min_fraction": 2}).status_code == 422


def test_regions_command_skips_until_the_words_change(scored, settings, tiny_rn):
    """`worker regions MODEL` runs its stage through the pipeline on the stored model (none loaded): up to
    date the second time; rerun after the words stage ran again (its fingerprint is an input) and with --force."""
    from tests.test_pipeline import skips_then_reruns

    def new_words() -> list[str]:
        run_words(scored, tiny_rn, "tiny", "layer2", words=WORDS[:12], plan=RenderPlan(tiny_rn.image_size))
        return ["regions", "tiny", "--layer", "layer2"]

    first = skips_then_reruns(settings, ["regions", "tiny", "--layer", "layer2"], "regions", "tiny", new_words)
    assert first.startswith("tiny layer2: {'units_scored': ")


def test_expressions_parse_or_say_why():
    assert parse_expression("-a + b-c") == [(-1, "a"), (1, "b"), (-1, "c")]
    for bad in ("", "a b", "a + + b", "a -"):
        with pytest.raises(EmbeddingError):
            parse_expression(bad)


def test_typographic_units_are_found_and_masking_changes_neighbours():
    words = ["running", "eating", "singing", "walking", "talking", "reading", "king", "queen", "dog", "cat",
             "red", "blue", "green", "house", "car", "apple", "river", "stone", "cloud", "bread", "chair", "plant",
             "money", "light", "sound", "table", "water", "horse", "paper", "glass"]
    rng = np.random.default_rng(0)
    scores = rng.random((len(words), 6)) * 0.1
    scores[:7, 0] += 5.0  # unit 0 fires for words ending in "-ing", "king" among them: typographic
    scores[[6, 7], 1] += 3.0  # unit 1 likes royalty
    space = WordSpace(words, scores)
    assert shared_fragment(words[:6] + ["dog", "cat", "red", "car"]) == "-ing"
    assert shared_fragment(["dog", "cat", "red", "car", "king"]) is None
    assert space.typographic == {0: "-ing"}
    plain = [n["word"] for n in space.neighbours("king", 3)]
    masked = [n["word"] for n in space.neighbours("king", 3, mask_typographic=True)]
    assert plain[0].endswith("ing")  # spelling decides while the typographic unit counts
    assert masked[0] == "queen"  # with it masked, royalty decides
    assert len(space.neighbours("king", 100)) == len(words) - 1
