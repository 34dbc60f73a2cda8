"""Conditional probability studies through the real app: uniform buckets, blind labelling that never
shows an activation, resumable answers, plot data equal to the answers given, agreement, exports."""
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.lookup import unit_by_key
from app.studies import sample_buckets
from app.study_results import cohen_kappa
from store.keys import UnitKey
from store.schema import ActivationSample, Image, StudyItem, UnitStats

API = {"Authorization": "Bearer test-token", "Accept": "application/json"}
NEURON = "/models/toy/layer4/2"
STD = 1.7


def make_samples(store, n=300, seed=1):
    """n images with heavy-tailed activations (many near zero, few large), as the examples stage leaves them."""
    rng = np.random.default_rng(seed)
    acts = np.concatenate([rng.exponential(0.6, n - 20) - 0.9, rng.uniform(3.0, 9.0, 20)])
    acts = acts + rng.uniform(0, 1e-6, n) + np.pi * 1e-4  # distinctive digits, no two equal
    paths = [store.cache.put_image(PILImage.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)), fmt="png")
             for _ in range(n)]
    with store.sessions.begin() as s:
        uid = unit_by_key(s, UnitKey("toy", "layer4", 2)).id
        s.add(UnitStats(unit_id=uid, n=n, mean=float(acts.mean()), std=STD, min=float(acts.min()),
                        max=float(acts.max())))
        images = [Image(sha256=p.rsplit("/", 1)[1].split(".")[0], source=f"test/{i}", caption=f"photo {i}",
                        width=4, height=4, path=p, thumb=p) for i, p in enumerate(paths)]
        s.add_all(images)
        s.flush()
        s.add_all(ActivationSample(unit_id=uid, image_id=im.id, activation=float(a))
                  for im, a in zip(images, acts, strict=True))
    return acts


@pytest.fixture
def site(toy_model, client):
    client.acts = make_samples(toy_model)
    return client


def new_study(client, **kw):
    body = {"name": "flags vs faces", "categories": ["flag", "face", "other"], "n_buckets": 6, "per_bucket": 5,
            "seed": 3, **kw}
    r = client.post(NEURON + "/studies", json=body, headers=API)
    assert r.status_code == 201, r.text
    return r.json()["study"]


def items(store, study_id):
    with store.sessions() as s:
        return list(s.scalars(select(StudyItem).where(StudyItem.study_id == study_id).order_by(StudyItem.position)))


def test_sampling_is_uniform_in_activation_not_in_density():
    rng = np.random.default_rng(0)
    acts = np.concatenate([rng.normal(0, 0.3, 5000), [4.0, 4.5, 5.0, 6.0, 10.0]])
    edges, picks = sample_buckets(acts, 10, 7, np.random.default_rng(1))
    assert np.allclose(np.diff(edges), (acts.max() - acts.min()) / 10)
    assert edges[0] == acts.min() and edges[-1] == acts.max()
    per_bucket = np.bincount([b for _, b in picks], minlength=10)
    available = np.bincount(np.clip(np.searchsorted(edges, acts, side="right") - 1, 0, 9), minlength=10)
    assert list(per_bucket) == [min(7, a) for a in available]
    for i, b in picks:
        assert edges[b] <= acts[i] <= edges[b + 1]
    assert len({i for i, _ in picks}) == len(picks)  # no stimulus twice


def test_created_study_fills_every_bucket_equally(site, toy_model):
    study = new_study(site)
    acts = site.acts
    rows = items(toy_model, study["id"])
    edges = np.linspace(acts.min(), acts.max(), 7)
    counts = np.bincount([r.bucket for r in rows], minlength=6)
    available = np.histogram(acts, bins=edges)[0]
    assert list(counts) == [min(5, a) for a in available]
    assert counts[0] == 5 and min(available) < 5  # the dense bucket is capped, a sparse tail bucket is not
    for r in rows:
        assert edges[r.bucket] - 1e-9 <= r.activation <= edges[r.bucket + 1] + 1e-9
    assert sorted(r.position for r in rows) == list(range(len(rows)))
    assert study["n_items"] == len(rows)


def collect(value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            out["keys"].add(k)
            collect(v, out)
    elif isinstance(value, list):
        for v in value:
            collect(v, out)
    elif isinstance(value, float | int) and not isinstance(value, bool):
        out["numbers"].add(value)
    return out


def assert_blind(text: str, data: dict, rows):
    found = collect(data, {"keys": set(), "numbers": set()})
    assert not found["keys"] & {"activation", "bucket", "sigma", "lo", "hi", "id_"}
    acts = [r.activation for r in rows]
    for a in acts:
        assert a not in found["numbers"]
        for shown in (repr(a), f"{a:.6g}", f"{a:.4f}", f"{a:.3f}", f"{a / STD:.3f}"):
            assert shown not in text


def test_blind_page_never_shows_activations(site, toy_model):
    study = new_study(site)
    rows = items(toy_model, study["id"])
    page = f"/studies/{study['id']}/label"
    html = site.get(page + "?labeller=ann").text
    data = site.get(page + ".json?labeller=ann").json()
    assert len(data["items"]) == min(24, len(rows)) and set(data["items"][0]) == {
        "item", "image", "thumb", "caption", "answer"}
    assert_blind(html, data, rows)
    assert_blind(json.dumps(data), data, rows)
    # the display order is shuffled: it does not follow the buckets
    everything = site.get(page + ".json?labeller=ann&review=1").json()["items"]
    assert len(everything) == len(rows)
    shown_buckets = [next(r.bucket for r in rows if r.position == it["item"]) for it in everything]
    assert shown_buckets != sorted(shown_buckets) and shown_buckets != sorted(shown_buckets, reverse=True)
    # ids follow the display order too, so an id leaks nothing either
    by_id = sorted(rows, key=lambda r: r.id)
    assert [r.position for r in by_id] == sorted(r.position for r in rows)
    # after labelling, the review page is blind as well
    site.post(page, json={"labeller": "ann", "answers": {str(r.position): "flag" for r in rows[:4]}}, headers=API)
    review = site.get(page + ".json?labeller=ann&review=1").json()
    assert_blind(site.get(page + "?labeller=ann&review=1").text, review, rows)
    study_json = site.get(f"/studies/{study['id']}.json").json()
    assert_blind(json.dumps(study_json), study_json, rows)


def bucket_category(bucket):
    return "flag" if bucket >= 4 else ("face" if bucket in (2, 3) else "other")


def test_labelling_resumes_and_plot_data_matches_the_answers(site, toy_model):
    study = new_study(site)
    sid = study["id"]
    rows = items(toy_model, sid)
    page = f"/studies/{sid}/label"
    first = site.get(page + ".json?labeller=ann").json()["items"][:7]
    r = site.post(page, json={"labeller": "ann", "answers": {str(it["item"]): "flag" for it in first}}, headers=API)
    assert r.status_code == 200 and r.json()["saved"] == 7 and r.json()["progress"] == {"ann": 7}
    resumed = site.get(page + ".json?labeller=ann").json()
    assert resumed["done"] == 7 and resumed["remaining"] == len(rows) - 7
    assert {it["item"] for it in resumed["items"]}.isdisjoint({it["item"] for it in first})
    # answer everything (overwriting the first seven) with a known rule, one item skipped
    answers = {str(r.position): bucket_category(r.bucket) for r in rows}
    skipped = rows[0]
    answers[str(skipped.position)] = ""
    site.post(page, json={"labeller": "ann", "answers": answers}, headers=API)
    res = site.get(f"/studies/{sid}/results.json").json()
    assert res["labeller"] == "ann" and res["n_labelled"] == len(rows) - 1
    for b in res["buckets"]:
        mine = [r for r in rows if r.bucket == b["bucket"] and r.id != skipped.id]
        expected = {c: sum(bucket_category(r.bucket) == c for r in mine) for c in ["flag", "face", "other"]}
        assert b["counts"] == expected and b["labelled"] == len(mine)
        assert b["p"] == {c: n / len(mine) for c, n in expected.items()}
        assert b["center_sigma"] == pytest.approx((b["lo"] + b["hi"]) / 2 / STD)
    assert res["buckets"][0]["lo"] == pytest.approx(site.acts.min())
    assert res["buckets"][-1]["hi"] == pytest.approx(site.acts.max())
    table = list(csv.DictReader(io.StringIO(site.get(f"/studies/{sid}/results.csv").text)))
    assert [int(row["labelled"]) for row in table] == [b["labelled"] for b in res["buckets"]]
    assert [int(row["count_face"]) for row in table] == [b["counts"]["face"] for b in res["buckets"]]
    assert [float(row["p_flag"]) for row in table] == pytest.approx([b["p"]["flag"] for b in res["buckets"]])


def test_plot_images_and_neuron_page(site, toy_model):
    study = new_study(site)
    sid = study["id"]
    rows = items(toy_model, sid)
    site.post(f"/studies/{sid}/label", json={"labeller": "ann", "answers": {
        str(r.position): bucket_category(r.bucket) for r in rows}}, headers=API)
    svg = site.get(f"/studies/{sid}/plot.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg.content and b"flag" in svg.content and b"standard deviations" in svg.content
    again = site.get(f"/studies/{sid}/plot.svg", headers={"If-None-Match": svg.headers["etag"]})
    assert again.status_code == 304
    png = site.get(f"/studies/{sid}/plot.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert site.get(f"/studies/{sid}/plot.gif").status_code == 404
    card = site.get(NEURON + ".json").json()["sections"]["studies"]
    assert card["studies"][0]["plot_url"] == f"/studies/{sid}/plot.svg" and card["samples"] == 300
    html = site.get(NEURON).text
    assert f'src="/studies/{sid}/plot.svg"' in html and "P(category | activation) of toy/layer4/2" in html
    results_html = site.get(f"/studies/{sid}/results").text
    assert "Stacked bars" in results_html and "flag" in results_html and "built-in method" not in results_html
    first_row = re.search(r"<tr><th scope=\"row\">[^<]*</th><td>(\d+)</td><td>(\d+)</td>", results_html)
    assert first_row and int(first_row.group(1)) == sum(r.bucket == 0 for r in rows)


def test_second_labeller_agreement(site, toy_model):
    study = new_study(site, n_buckets=2, per_bucket=5, categories=["x", "y"])
    rows = items(toy_model, study["id"])
    assert len(rows) == 10
    a = ["x"] * 5 + ["y"] * 5
    b = ["x"] * 4 + ["y"] * 5 + ["x"]  # 8 of 10 agree; both say x half the time: chance 0.5, kappa 0.6
    page = f"/studies/{study['id']}/label"
    for who, given in (("ann", a), ("bob", b)):
        answers = {str(r.position): c for r, c in zip(rows, given, strict=True)}
        site.post(page, json={"labeller": who, "answers": answers}, headers=API)
    res = site.get(f"/studies/{study['id']}/results.json?labeller=bob").json()
    assert res["labeller"] == "bob" and res["labellers"] == ["ann", "bob"]
    (pair,) = res["agreement"]
    assert pair["labellers"] == ["ann", "bob"] and pair["n_items"] == 10
    assert pair["percent"] == pytest.approx(80.0) and pair["kappa"] == pytest.approx(0.6)
    assert "0.600" in site.get(f"/studies/{study['id']}/results").text
    assert site.get(f"/studies/{study['id']}/results.json?labeller=eve").status_code == 404


def test_kappa_agrees_with_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(5)
    cats = ["a", "b", "c", "d"]
    for _ in range(20):
        a = list(rng.choice(cats, 40))
        b = [x if rng.random() < 0.6 else str(rng.choice(cats)) for x in a]
        assert cohen_kappa(a, b, cats) == pytest.approx(cohen_kappa_score(a, b, labels=cats))
    assert cohen_kappa(["a"] * 5, ["a"] * 5, cats) is None  # chance agreement is total: undefined
    assert cohen_kappa([], [], cats) is None


def test_bad_study_input(site, toy_model):
    study = new_study(site)
    sid = study["id"]
    page = f"/studies/{sid}/label"
    unknown = site.post(page, json={"labeller": "ann", "answers": {"0": "dinosaur"}}, headers=API)
    assert unknown.status_code == 422 and "flag, face, other" in unknown.json()["error"]
    assert site.post(page, json={"labeller": "ann", "answers": {"9999": "flag"}}, headers=API).status_code == 422
    assert site.post(page, json={"labeller": "ann", "answers": {"first": "flag"}}, headers=API).status_code == 422
    assert site.post(page, json={"labeller": "ann", "answers": ["flag"]}, headers=API).status_code == 422
    assert site.get(f"/studies/{sid}/results.json").json()["n_labelled"] == 0  # nothing half-saved
    assert site.post(page, json={"answers": {"0": "flag"}}, headers={"Accept": "application/json"}).status_code == 401
    assert site.get("/studies/999.json").status_code == 404
    assert site.get("/studies/abc.json").status_code == 422
    for bad in ({"n_buckets": 1}, {"per_bucket": 0}, {"categories": []}, {"categories": ["a", "A"]}):
        r = site.post(NEURON + "/studies", json={"name": "s", "categories": ["a"], **bad}, headers=API)
        assert r.status_code == 422, bad
    empty = site.post("/models/toy/layer4/5/studies", json={"name": "s", "categories": ["a"]}, headers=API)
    assert empty.status_code == 422 and "microscope worker examples" in empty.json()["error"]
    added = site.post(f"/studies/{sid}/categories", json={"category": "map"}, headers=API)
    assert added.json()["study"]["categories"] == ["flag", "face", "other", "map"]
    assert site.post(f"/studies/{sid}/categories", json={"category": "MAP"}, headers=API).status_code == 422


def test_browser_flow_with_forms(site, toy_model):
    r = site.post("/login", data={"name": "ann", "token": "test-token", "next": NEURON + "/studies"},
                  follow_redirects=False)
    assert r.status_code == 303
    form = site.get(NEURON + "/studies").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)
    made = site.post(NEURON + "/studies", data={"name": "form study", "categories": "flag, face", "n_buckets": "3",
                                                "per_bucket": "2", "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303
    label_url = made.headers["location"]
    page = site.get(label_url).text
    positions = re.findall(r'name="item-(\d+)" value="flag"', page)
    assert len(positions) == 6 and "0 of 6 labelled" in page
    fields = {f"item-{p}": "flag" for p in positions[:4]} | {"csrf_token": csrf}
    saved = site.post(label_url, data=fields, follow_redirects=False)
    assert saved.status_code == 303
    nxt = site.get(saved.headers["location"]).text
    assert "4 of 6 labelled" in nxt and len(re.findall(r'value="flag"', nxt)) == 2
    no_csrf = site.post(label_url, data={f"item-{positions[4]}": "face"}, follow_redirects=False)
    assert no_csrf.status_code == 403
