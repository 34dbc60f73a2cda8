"""Self-labels: planted concepts are recovered with a high held-out AUC (pure compute); the stage on a real
tiny model stores "auto" labels with their scores, scores a human label the same way, and the labels sort
and filter by score through HTTP."""
import numpy as np
import pytest
from sqlalchemy import select

from store.schema import Label, LabelScore
from worker.analyses.selflabels import auc, label_units, soft_wpmi, split, text_auc


def planted(rows: int = 2000, concepts: int = 30, units: int = 12, seed: int = 0):
    """Each image shows one concept (its cosines favour it); unit u fires for the images of concept 2u+1,
    except the last two units: pure noise."""
    rng = np.random.default_rng(seed)
    shown = rng.integers(concepts, size=rows)
    sims = rng.normal(0.2, 0.02, size=(rows, concepts))
    sims[np.arange(rows), shown] += 0.1
    acts = rng.normal(size=(rows, units))
    for u in range(units - 2):
        acts[shown == 2 * u + 1, u] += 3
    hashes = rng.integers(0, 2**62, size=rows)
    return acts, sims, hashes


def test_self_labels_recover_planted_concepts_with_a_high_heldout_auc():
    acts, sims, hashes = planted()
    result = label_units(acts, sims, hashes)
    assert result["best"][:10].tolist() == [2 * u + 1 for u in range(10)]
    assert (result["auc"][:10] > 0.9).all()
    assert (np.abs(result["auc"][10:] - 0.5) < 0.15).all()  # noise units: near chance
    assert 300 < result["heldout"] < 500  # 1 in 5


def test_auc_and_soft_wpmi_on_small_cases():
    values = np.array([[3.0], [2.0], [1.0], [0.0]])
    assert auc(values, np.array([True, True, False, False]))[0] == 1.0
    assert auc(values, np.array([False, True, True, False]))[0] == 0.5
    assert np.isnan(auc(values, np.zeros(4, bool))[0])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    acts = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert soft_wpmi(acts, probs, top=2).argmax(axis=1).tolist() == [0, 1]
    fit, held = split(np.arange(10))
    assert held.tolist() == [0, 5] and len(fit) == 8
    text = auc(values, np.array([True, False, False, False]))[0]
    assert text_auc(values, np.zeros((4, 2)), np.array([[1.0], [0], [0], [0]]))[0] == text


@pytest.fixture
def labelled(store, probe_model, tmp_path):
    from tests.test_examples import make_corpus
    from worker.analyses.examples import ExampleOptions, run_examples

    corpus = make_corpus(tmp_path / "corpus", n=30, bad=False)
    run_examples(store, probe_model, "tiny", corpus, ["layer4"], ExampleOptions(k=4, workers=0, progress=False,
                                                                                samples=0))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\nyellow\nstripes\nsquare\n")
    return vocab


def test_the_stage_stores_scored_auto_labels_and_scores_human_ones(store, probe_model, labelled, client):
    from worker.analyses.selflabels import run_selflabels

    r = client.post("/models/tiny/layer4/3/labels", json={"text": "blue things", "based_on": None},
                    headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 201
    report = run_selflabels(store, probe_model, "tiny", vocab=str(labelled))
    assert report["units"] == 512 and report["human_scored"] == 1 and report["labels_changed"] == 512
    assert report["median_auc"] is None or 0 <= report["median_auc"] <= 1  # never NaN: Postgres JSON refuses it
    with store.sessions() as s:
        autos = s.scalars(select(Label).where(Label.source == "auto")).all()
        scores = {x.label_id: x for x in s.scalars(select(LabelScore))}
    assert {a.text for a in autos} <= {"red", "green", "blue", "yellow", "stripes", "square"}
    assert len(scores) == 513 and {x.method for x in scores.values()} == {"soft-wpmi", "heldout-auc"}
    assert all(x.score is None or 0 <= x.score <= 1 for x in scores.values())
    assert run_selflabels(store, probe_model, "tiny", vocab=str(labelled))["labels_changed"] == 0  # same texts

    unit3 = client.get("/models/tiny/layer4/3.json").json()["sections"]["labels"]
    assert unit3["human"]["faithfulness"]["method"] == "heldout-auc"
    assert unit3["auto"]["faithfulness"]["method"] == "soft-wpmi"
    listing = client.get("/models/tiny/layer4/labels.json").json()["labels"]
    aucs = [x["auc"] for x in listing if x["auc"] is not None]
    assert len(listing) == 513 and aucs == sorted(aucs, reverse=True)
    if aucs:
        cut = aucs[len(aucs) // 2]
        kept = client.get("/models/tiny/layer4/labels.json", params={"min_score": cut, "source": "auto"}).json()
        assert kept["labels"] and all(x["auc"] >= cut and x["source"] == "auto" for x in kept["labels"])
    assert client.get("/models/tiny/layer4/labels.json", params={"min_score": 2}).status_code == 422
    assert "AUC" in client.get("/models/tiny/layer4/3").text
    html = client.get("/models/tiny/layer4/labels", params={"sort": "unit"}).text
    assert "blue things" in html and "heldout-auc" in html
    assert client.get("/models/tiny/nope/labels").status_code == 404
