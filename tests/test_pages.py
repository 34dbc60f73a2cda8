"""Every page and its JSON twin through the real app; bad input gives 404/422, never a 500."""
import subprocess
import sys

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.lookup import unit_by_key
from store.keys import UnitKey
from store.schema import FeatureVis, Label, Unit


@pytest.fixture
def site(toy_model, client):
    """The toy model with a label and a feature visualization on unit 3."""
    store = toy_model
    rel = store.cache.put_unit_image(UnitKey("toy", "layer4", 3), "plain", PILImage.new("RGB", (16, 16), "red"))
    with store.sessions.begin() as s:
        unit = unit_by_key(s, UnitKey("toy", "layer4", 3))
        s.add(FeatureVis(unit_id=unit.id, kind="plain", image=rel, objective=1.0, steps=8, size=16, seed=0))
        s.add(Label(unit_id=unit.id, source="human", version=1, text="<script>alert(1)</script>", author="ann"))
    return client


PAGES = ["/", "/models/toy", "/models/toy/layer4", "/models/toy/layer4/3", "/models/toy/layer4/0"]


@pytest.mark.parametrize("path", PAGES)
def test_page_and_json_twin(site, path):
    html = site.get(path)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    twin = "/index.json" if path == "/" else path + ".json"
    js = site.get(twin)
    assert js.status_code == 200 and js.headers["content-type"] == "application/json"
    accept = site.get(path, headers={"Accept": "application/json"})
    assert accept.json() == js.json()


def test_neuron_card(site):
    data = site.get("/models/toy/layer4/3.json").json()
    assert data["key"] == "toy/layer4/3"
    assert data["prev"] == "/models/toy/layer4/2" and data["next"] == "/models/toy/layer4/4"
    assert data["sections"]["featurevis"]["plain"]["url"].startswith("/cache/units/toy/layer4/3/")
    assert data["sections"]["examples"] is None  # no data yet: said so, not broken
    html = site.get("/models/toy/layer4/3").text
    assert 'property="og:image"' in html and "/cache/units/toy/layer4/3/plain.png" in html
    assert 'class="copy-link"' in html
    assert "No dataset examples yet" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_edges_have_no_prev_or_next(site):
    assert site.get("/models/toy/layer4/0.json").json()["prev"] is None
    assert site.get("/models/toy/layer4/9.json").json()["next"] is None


def test_layer_grid_paginates_and_shows_thumbnails(site, settings):
    settings.page_size = 4
    first = site.get("/models/toy/layer4.json").json()
    assert first["pages"] == 3 and [u["unit"] for u in first["units"]] == [0, 1, 2, 3]
    assert first["units"][3]["thumb"] and first["units"][3]["label"]
    last = site.get("/models/toy/layer4.json?page=3").json()
    assert [u["unit"] for u in last["units"]] == [8, 9] and last["next"] is None
    assert site.get("/models/toy/layer4?page=4").status_code == 404
    assert site.get("/models/toy/layer4?page=0").status_code == 422


def test_jump_to_unit_redirects(site):
    r = site.get("/models/toy/layer4?unit=7", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models/toy/layer4/7"
    assert site.get("/models/toy/layer4?unit=x").status_code == 422


@pytest.mark.parametrize("path,status,needle", [
    ("/models/nope", 404, "Models in this store: toy"),
    ("/models/toy/layer9", 404, "Its layers: layer4"),
    ("/models/toy/layer4/10", 404, "toy layer4 has units 0–9"),
    ("/models/toy/layer4/99999999999999999999", 404, "has units 0–9"),
    ("/models/toy/layer4/abc", 422, "non-negative whole number"),
    ("/models/toy/layer4/-1", 422, "has units 0–9"),
    ("/models/toy/layer4/1.5", 422, "whole number"),
    ("/no/such/page/at/all", 404, "No page"),
])
def test_bad_input(site, path, status, needle):
    r = site.get(path)
    assert r.status_code == status and needle in r.text
    js = site.get(path, headers={"Accept": "application/json"})
    assert js.status_code == status and needle in js.json()["error"]


def test_half_registered_unit_rows_do_not_break_pages(site, toy_model):
    with toy_model.sessions.begin() as s:
        s.delete(s.scalar(select(Unit).where(Unit.index == 5)))
    assert site.get("/models/toy/layer4/5").status_code == 404
    assert site.get("/models/toy/layer4").status_code == 200


def test_app_imports_without_torch():
    code = "import sys, app.main, worker.cli.root; from app.main import create_app; assert 'torch' not in sys.modules"
    code += "; assert 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
