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
    assert text_auc(values, np.zeros(4), np.array([[1.0], [0], [0], [0]]))[0] == text


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
    from tests.conftest import stage_report

    r = client.post("/models/tiny/layer4/3/labels", json={"text": "blue things", "based_on": None},
                    headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 201
    report = stage_report(store, probe_model, "selflabels", vocab=str(labelled))
    assert report["units"] == 512 and report["human_scored"] == 1 and report["labels_changed"] == 512
    assert report["median_auc"] is None or 0 <= report["median_auc"] <= 1  # never NaN: Postgres JSON refuses it
    with store.sessions() as s:
        autos = s.scalars(select(Label).where(Label.source == "auto")).all()
        scores = {x.label_id: x for x in s.scalars(select(LabelScore))}
    assert {a.text for a in autos} <= {"red", "green", "blue", "yellow", "stripes", "square"}
    assert len(scores) == 513 and {x.method for x in scores.values()} == {"soft-wpmi", "heldout-auc"}
    assert all(x.score is None or 0 <= x.score <= 1 for x in scores.values())
    assert stage_report(store, probe_model, "selflabels", vocab=str(labelled))["labels_changed"] == 0  # same texts

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


def planted_matrix(folder, rows: int = 1500, concepts: int = 24, units: int = 10, parts: int = 2, seed: int = 1):
    """The planted case as stored: an fp16 activation matrix in `parts` parts (with ties: a dead unit, a unit of
    a few levels, signed zeros), the rows' image embeddings and the concepts' text embeddings."""
    from worker.analyses.activations import PartWriter

    rng = np.random.default_rng(seed)
    shown = rng.integers(concepts, size=rows)
    texts = np.eye(concepts, dtype=np.float32)  # so the cosines are the embeddings, planted as in `planted`
    emb = rng.normal(0.2, 0.02, size=(rows, concepts)).astype(np.float32)
    emb[np.arange(rows), shown] += 0.1
    acts = rng.normal(size=(rows, units))
    for u in range(units - 3):
        acts[shown == 2 * u + 1, u] += 3
    acts[:, -3] = 0  # dead: every row ties
    acts[:, -2] = np.round(acts[:, -2]) / 2  # a few levels: many ties
    acts[::7, -1] = -0.0
    hashes = rng.integers(0, 2**62, size=rows)
    cuts = np.linspace(0, rows, parts + 1).astype(int)
    for i in range(parts):
        part = PartWriter(folder, f"part-{i}of{parts}", units, {"corpus": ""}).open(0)
        part.append(acts[cuts[i]:cuts[i + 1]], hashes[cuts[i]:cuts[i + 1]], np.arange(cuts[i], cuts[i + 1]))
        part.commit(complete=True)
        part.close()
    return emb, texts, hashes


def test_the_blocked_scan_equals_the_whole_matrix_computation(tmp_path):
    """`label_matrix` (blocks of 37 rows, across part boundaries) against `label_units` on the dense matrix:
    the same top rows, best concepts, runners-up and AUCs exactly; soft-WPMI to 1e-9 (p(c) is a float64
    sum by blocks rather than one pairwise mean)."""
    from app.activations import ActivationMatrix
    from worker.analyses.selflabels import checked_split, label_matrix, top_rows

    emb, texts, hashes = planted_matrix(tmp_path)
    matrix = ActivationMatrix(tmp_path)
    dense = matrix.dense()
    fit, _, top = checked_split(hashes, 28)
    assert np.array_equal(top_rows(matrix, fit, top, block=37),
                          fit[np.argsort(-dense[fit], axis=0, kind="stable")[:top]])
    got, want = label_matrix(matrix, emb, texts, hashes, block=37), label_units(dense, emb @ texts.T, hashes)
    for key in ("best", "runners_up", "positives"):
        assert np.array_equal(got[key], want[key]), key
    assert np.array_equal(got["auc"], want["auc"], equal_nan=True)
    assert np.allclose(got["wpmi"], want["wpmi"], rtol=1e-9, atol=1e-9)
    assert got["heldout"] == want["heldout"] and got["top"] == want["top"]
    assert got["best"][:7].tolist() == [2 * u + 1 for u in range(7)] and (got["auc"][:7] > 0.9).all()


def test_the_scan_allocates_a_block_not_the_matrix(tmp_path, monkeypatch):
    """40,000 rows x 128 units (20 MB as float32; the whole-matrix code's argsort alone is 41 MB): the scan's
    peak allocation stays within a few blocks and the held-out rows."""
    import tracemalloc

    from app.activations import ActivationMatrix
    from worker.analyses import selflabels

    monkeypatch.setattr(selflabels, "MAX_HELDOUT", 500)
    emb, texts, hashes = planted_matrix(tmp_path, rows=40_000, units=128, parts=1)
    np.save(tmp_path / "emb.npy", emb)
    emb = np.load(tmp_path / "emb.npy", mmap_mode="r")
    matrix = ActivationMatrix(tmp_path)
    import scipy.stats  # noqa: F401  (its first import is not the scan's memory)

    tracemalloc.start()
    try:
        result = selflabels.label_matrix(matrix, emb, texts, hashes, block=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = matrix.rows * matrix.units * 4
    assert result["heldout"] == 500 and result["best"][:7].tolist() == [2 * u + 1 for u in range(7)]
    assert peak < 4e6 < whole / 5, f"peak {peak / 1e6:.1f} MB for a {whole / 1e6:.0f} MB matrix"


def test_the_stage_computes_in_compute_and_only_stores_in_write(store, probe_model, labelled, monkeypatch):
    """Stage contract: compute returns labels and scores (arrays) and writes nothing; write stores them; the
    matrix is read in blocks and by rows, never whole."""
    from app.activations import ActivationMatrix
    from store.writes import recorded_run
    from worker.pipeline.contract import BuildContext
    from worker.stages.selflabels import SelfLabels

    monkeypatch.setattr(ActivationMatrix, "dense", lambda self: pytest.fail("the stage loaded the whole matrix"))
    ctx = BuildContext(store, probe_model, "tiny", None, ("layer4",), {"selflabels": {"vocab": str(labelled)}}, (),
                       progress=False)
    stage = SelfLabels()
    parts = [stage.compute(ctx, item) for item in stage.items(ctx)]
    with store.sessions() as s:
        assert s.scalars(select(Label).where(Label.source == "auto")).first() is None
    assert parts[0]["layer"] == "layer4" and parts[0]["result"]["best"].shape == (512,)
    with recorded_run(store, "selflabels", "tiny", {}) as run:
        report = stage.write(ctx, stage.merge(ctx, parts), run["run_id"])
    assert report["units"] == 512 and report["layers"]["layer4"]["labels_changed"] == 512
    with store.sessions() as s:
        assert len(s.scalars(select(LabelScore)).all()) == 512
