"""Labels and families written through the web app are found by the search box (issue 8 meets issue 7)."""
import pytest

API = {"Authorization": "Bearer test-token", "Accept": "application/json"}


@pytest.fixture
def site(toy_model, client):
    return client


def found(client, q: str) -> list[str]:
    r = client.get("/search.json", params={"q": q})
    assert r.status_code == 200
    return [hit["key"] for hit in r.json()["results"]]


def test_a_new_label_is_searchable_and_an_edit_replaces_it(site):
    assert found(site, "zeppelin") == []
    r = site.post("/models/toy/layer4/6/labels", json={"text": "zeppelin detector"}, headers=API)
    assert r.status_code == 201
    assert found(site, "zeppelin") == ["toy/layer4/6"]
    r = site.post("/models/toy/layer4/6/labels", json={"text": "airship hull", "based_on": 1}, headers=API)
    assert r.status_code == 201
    assert found(site, "zeppelin") == [] and found(site, "airship") == ["toy/layer4/6"]


def test_family_membership_is_searchable(site):
    r = site.post("/models/toy/layer4/2/families", json={"family": "Religion"}, headers=API)
    assert r.status_code == 200
    assert "toy/layer4/2" in found(site, "religion")
