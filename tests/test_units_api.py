"""GET /api/units: a paginated, filtered, stably ordered JSON listing of units, with 422s that say why."""
import pytest
from neuron_fill import rich_store
from sqlalchemy import update

from app.db import Layer, Unit, UnitStats


@pytest.fixture
def api(store, client):
    """The rich store, with layer4 unit i's max activation i + 0.5 and std 2 (so max_sigma = (i + 0.5) / 2)."""
    rich_store(store)
    with store.sessions.begin() as s:
        for uid, index in s.execute(Unit.__table__.select().with_only_columns(Unit.id, Unit.index)
                                    .join(Layer.__table__).where(Layer.name == "layer4")).all():
            s.execute(update(UnitStats).where(UnitStats.unit_id == uid).values(max=index + 0.5, std=2.0))
    return client


def keys(page: dict) -> list[str]:
    return [u["key"] for u in page["units"]]


ALL = [f"synth/layer4/{i}" for i in range(6)] + ["synth/layer3/0", "synth/layer3/1"]


def test_listing_pages_follow_next_links_in_a_stable_order(api):
    seen, url = [], "/api/units?per_page=3"
    while url:
        page = api.get(url).json()
        assert page["total"] == 8 and page["pages"] == 3
        seen += keys(page)
        url = page["next"]
    assert seen == ALL
    last = api.get("/api/units?per_page=3&page=3").json()
    assert last["next"] is None and last["prev"] == "/api/units?page=2&per_page=3"


def test_each_unit_carries_key_links_label_families_and_stats(api):
    unit = api.get("/api/units?model=synth&layer=layer4&per_page=1").json()["units"][0]
    assert unit["url"] == "/models/synth/layer4/0" and unit["json_url"] == "/models/synth/layer4/0.json"
    assert unit["label"] == {"text": "maps and places 0", "source": "human"}
    assert {"name": "Geography", "source": "human"} in unit["families"] and len(unit["families"]) == 3
    assert unit["stats"] == {"n": 1, "mean": 0.0, "std": 2.0, "min": -1.5, "max": 0.5, "max_sigma": 0.25}
    assert api.get(unit["json_url"]).json()["sections"]["stats"]["max"] == 0.5


@pytest.mark.parametrize("query,expected", [
    ("label=MAPS%20AND", ALL[:2]),
    ("label=places%201", ALL[1:2]),
    ("label=auto%20guess", []),  # the current label is the human one
    ("family=geography", ALL[:2]),
    ("family=Region&layer=layer4", ALL[:2]),
    ("min_max_act=3&layer=layer4", ALL[3:6]),
    ("min_max_act=1&max_max_act=3.5", ALL[1:4] + ALL[6:]),
    ("min_max_sigma=2", ALL[4:6]),
    ("sort=-max_act&layer=layer4&per_page=2", ALL[5:3:-1]),
    ("sort=-max_act&min_max_act=1.5&max_max_act=1.5", ALL[1:2] + ALL[6:]),
    ("sort=label&per_page=3", ["synth/layer4/0", "synth/layer4/1", "synth/layer4/2"]),
    ("label=%25", []),
])
def test_filters_and_sorts(api, query, expected):
    page = api.get("/api/units?" + query).json()
    assert keys(page) == expected
    if page["next"]:
        assert query.split("&")[0] in page["next"]


@pytest.mark.parametrize("query,needle", [
    ("model=nope", "no model 'nope'; models in this store: synth"),
    ("model=synth&layer=layer9", "no layer 'layer9' in synth; layers: layer3, layer4"),
    ("family=nope", "No family 'nope'. Families: Region"),
    ("sort=loudest", "sort: Input should be 'key'"),
    ("per_page=0", "per_page: Input should be greater than or equal to 1"),
    ("min_max_act=abc", "min_max_act: Input should be a valid number"),
    ("min_max_act=NaN", "min_max_act: Input should be a finite number"),
])
def test_bad_filters_are_422_with_the_reason_in_json(api, query, needle):
    r = api.get("/api/units?" + query)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"]


def test_the_listing_is_in_the_openapi_schema(api):
    op = api.get("/openapi.json").json()["paths"]["/api/units"]["get"]
    names = {p["name"] for p in op["parameters"]}
    assert {"model", "layer", "label", "family", "min_max_act", "sort", "page", "per_page"} <= names
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/UnitsPage")
