"""Families through the real app: the seeded paper list, pages with JSON twins, editor-only changes."""
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.families import get_family, set_auto_families
from app.lookup import unit_by_key
from store.keys import UnitKey
from store.schema import CurationEvent, FeatureVis, Label, UnitText

API = {"Authorization": "Bearer test-token", "Accept": "application/json"}
PAPER = ["Region", "Person", "Emotion", "Religion", "Art style", "Holiday", "Brand", "Typographic", "Counting",
         "Time", "Colour", "Polysemantic"]


@pytest.fixture
def site(toy_model, client):
    """Units 1 and 2 with a feature visualization and a label."""
    for unit, colour in ((1, "red"), (2, "blue")):
        key = UnitKey("toy", "layer4", unit)
        rel = toy_model.cache.put_unit_image(key, "plain", PILImage.new("RGB", (16, 16), colour))
        with toy_model.sessions.begin() as s:
            uid = unit_by_key(s, key).id
            s.add(FeatureVis(unit_id=uid, kind="plain", image=rel, objective=1.0, steps=8, size=16, seed=0))
            s.add(Label(unit_id=uid, source="human", version=1, text=f"{colour} things", author="ann"))
    return client


def uid(store, unit):
    with store.sessions() as s:
        return unit_by_key(s, UnitKey("toy", "layer4", unit)).id


def test_the_papers_families_are_seeded_in_order(site):
    names = [f["name"] for f in site.get("/families.json").json()["families"]]
    assert [n for n in names if n in PAPER] == PAPER
    html = site.get("/families").text
    assert all(n in html for n in PAPER)


def test_unknown_family_404_names_what_exists(site):
    r = site.get("/families/Dinosaur.json")
    assert r.status_code == 404
    body = r.json()
    assert "Dinosaur" in body["error"] and "Region" in body["error"] and "Colour" in body["error"]
    assert {"text": "Region", "url": "/families/Region"} in body["links"]
    assert site.get("/families/Dinosaur").status_code == 404
    assert site.post("/models/toy/layer4/1/families", json={"family": "Dinosaur"}, headers=API).status_code == 404


def test_family_names_match_loosely(site):
    assert site.get("/families/art-style.json").json()["family"]["name"] == "Art style"
    assert site.get("/families/COLOUR.json").json()["family"]["name"] == "Colour"


def test_membership_needs_the_token_and_shows_on_the_family_grid(site, toy_model):
    assert site.post("/models/toy/layer4/1/families", json={"family": "Colour"},
                     headers={"Accept": "application/json"}).status_code == 401
    r = site.post("/models/toy/layer4/1/families", json={"family": "colour", "author": "ann"}, headers=API)
    assert r.status_code == 200 and r.json()["changed"] is True
    again = site.post("/models/toy/layer4/1/families", json={"family": "Colour"}, headers=API)
    assert again.json()["changed"] is False
    page = site.get("/families/Colour.json").json()
    assert [m["key"] for m in page["members"]] == ["toy/layer4/1"]
    member = page["members"][0]
    assert member["label"] == "red things" and member["thumb"].startswith("/cache/units/toy/layer4/1/")
    assert member["source"] == "human" and member["author"] == "ann"
    html = site.get("/families/Colour").text
    assert 'alt="feature visualization of toy/layer4/1"' in html and "red things" in html
    listing = {f["name"]: f for f in site.get("/families.json").json()["families"]}
    assert listing["Colour"]["members"] == 1 and listing["Colour"]["preview"][0]["key"] == "toy/layer4/1"
    card = site.get("/models/toy/layer4/1.json").json()["sections"]["labels"]
    assert card["families"][0]["name"] == "Colour" and card["families"][0]["source"] == "human"


def test_removal_is_logged_and_updates_search_text(site, toy_model):
    site.post("/models/toy/layer4/1/families", json={"family": "Colour", "author": "ann"}, headers=API)
    with toy_model.sessions() as s:
        assert "Colour" in s.get(UnitText, uid(toy_model, 1)).document
    r = site.post("/models/toy/layer4/1/families", json={"family": "Colour", "action": "remove", "author": "bob"},
                  headers=API)
    assert r.status_code == 200 and r.json()["families"] == []
    assert site.get("/families/Colour.json").json()["members"] == []
    with toy_model.sessions() as s:
        assert "Colour" not in s.get(UnitText, uid(toy_model, 1)).document
        events = [(e.action, e.family, e.author) for e in s.scalars(select(CurationEvent).order_by(CurationEvent.id))]
    assert events == [("family-add", "Colour", "ann"), ("family-remove", "Colour", "bob")]
    history = site.get("/models/toy/layer4/1.json").json()["sections"]["labels"]["events"]
    assert [e["action"] for e in history] == ["family-remove", "family-add"]
    missing = site.post("/models/toy/layer4/1/families", json={"family": "Colour", "action": "remove"}, headers=API)
    assert missing.status_code == 404 and "not in family" in missing.json()["error"]


def test_bad_membership_input_is_422(site):
    bad = site.post("/models/toy/layer4/1/families", json={"family": "Colour", "action": "destroy"}, headers=API)
    assert bad.status_code == 422 and "action" in bad.json()["error"]
    assert site.post("/families/Colour/members", json={"unit": "toy/layer4/x"}, headers=API).status_code == 422
    assert site.post("/families/Colour/members", json={"unit": "toy/layer4/99"}, headers=API).status_code == 404
    ok = site.post("/families/Colour/members", json={"unit": "toy/layer4/2"}, headers=API)
    assert ok.status_code == 200 and ok.json()["changed"] is True


def test_editors_create_and_describe_families(site):
    body = {"name": "Weather", "description": "rain, snow, storms"}
    assert site.post("/families", json=body, headers={"Accept": "application/json"}).status_code == 401
    r = site.post("/families", json=body, headers=API)
    assert r.status_code == 201 and r.json()["family"]["url"] == "/families/Weather"
    assert site.post("/families", json={"name": "weather"}, headers=API).status_code == 409
    assert site.post("/families", json={"name": "<b>bad</b>"}, headers=API).status_code == 422
    assert site.post("/families", json={"name": ""}, headers=API).status_code == 422
    names = [f["name"] for f in site.get("/families.json").json()["families"]]
    assert names[-1] == "Weather"
    site.post("/families/Weather", json={"description": "rain and snow"}, headers=API)
    assert site.get("/families/Weather.json").json()["family"]["description"] == "rain and snow"


def test_suggestions_are_listed_apart_from_members(site, toy_model):
    with toy_model.sessions.begin() as s:
        colour = get_family(s, "Colour")
        set_auto_families(s, uid(toy_model, 1), {colour.name: 0.8})
        set_auto_families(s, uid(toy_model, 2), {colour.name: 1.0})
    site.post("/models/toy/layer4/1/families", json={"family": "Colour"}, headers=API)
    page = site.get("/families/Colour.json").json()
    assert [m["key"] for m in page["members"]] == ["toy/layer4/1"]
    assert [(m["key"], m["source"], m["score"]) for m in page["suggested"]] == [("toy/layer4/2", "auto", 1.0)]
    assert page["n_suggested"] == 1
    html = site.get("/families/Colour").text
    assert "automatic guesses" in html
    card = site.get("/models/toy/layer4/2.json").json()["sections"]["labels"]
    assert card["families"] == [{"name": "Colour", "source": "auto", "url": "/families/Colour", "author": "worker",
                                 "score": 1.0}]
    assert "Colour (suggested)" in site.get("/models/toy/layer4/2").text


def test_suggestion_pages(site, toy_model, settings):
    settings.page_size = 2
    with toy_model.sessions.begin() as s:
        for unit in range(5):
            set_auto_families(s, uid(toy_model, unit), {"Time": 1.0 - unit / 10})
    first = site.get("/families/Time.json").json()
    assert first["pages"] == 3 and [m["unit"] for m in first["suggested"]] == [0, 1]
    assert first["next"] == "/families/Time?page=2"
    last = site.get("/families/Time.json?page=3").json()
    assert [m["unit"] for m in last["suggested"]] == [4]
    assert site.get("/families/Time.json?page=4").status_code == 404
    assert site.get("/families/Time.json?page=0").status_code == 422


def test_family_page_html_and_json_twin_agree(site):
    site.post("/models/toy/layer4/2/families", json={"family": "Colour"}, headers=API)
    js = site.get("/families/Colour.json").json()
    assert site.get("/families/Colour", headers={"Accept": "application/json"}).json() == js
    assert site.get("/families/Colour").headers["content-type"].startswith("text/html")
