"""The page cache serves a page again only while the store is unchanged: any committed write (the worker's,
an editor's) is visible on the next request; reads never bump the version; editors and routes that did not
opt in are never served from it."""
import pytest

from app.pagecache import PageCacheMiddleware
from store.schema import store_version
from tests.synthetic import populate, write_unit

NEURON = "/models/synth/layer4/3"


@pytest.fixture
def material(store):
    return populate(store, "synth", {"layer4": 8})


@pytest.fixture
def site(material, client):
    client.get("/")  # builds the middleware stack
    return client


def page_cache(app) -> PageCacheMiddleware:
    layer = app.middleware_stack
    while not isinstance(layer, PageCacheMiddleware):
        layer = layer.app
    return layer


def rewrite(store, material, unit: int, gen: int) -> None:
    uid, key = next(u for u in material.units if u[1].unit == unit)
    with store.sessions.begin() as s:
        write_unit(s, material, uid, key, gen)


def test_repeated_pages_come_from_the_cache(site):
    cache = page_cache(site.app)
    first = site.get(NEURON)
    hits = cache.hits
    for _ in range(3):
        again = site.get(NEURON)
        assert again.status_code == 200 and again.content == first.content
    assert cache.hits == hits + 3
    assert site.get(NEURON, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert site.get(NEURON + ".json").json()["key"] == "synth/layer4/3"  # the twin is its own entry


def test_a_worker_commit_is_visible_on_the_next_request(site, store, material):
    engine = site.app.state.engine
    assert site.get(NEURON + ".json").json()["sections"]["stats"]["n"] == 1
    before = store_version(engine)
    site.get(NEURON + ".json")
    assert store_version(engine) == before  # reading never bumps the version
    rewrite(store, material, 3, gen=9)
    assert store_version(engine) == before + 1
    assert site.get(NEURON + ".json").json()["sections"]["stats"]["n"] == 9
    rewrite(store, material, 5, gen=4)  # any write invalidates: simple and never stale
    assert site.get(NEURON + ".json").json()["sections"]["stats"]["n"] == 9


def test_a_failed_write_does_not_bump_the_version(site, store, material):
    engine = site.app.state.engine
    before = store_version(engine)
    with pytest.raises(RuntimeError), store.sessions.begin() as s:
        uid, key = material.units[0]
        write_unit(s, material, uid, key, gen=5)
        raise RuntimeError("the worker dies mid-transaction")
    assert store_version(engine) == before


def test_an_editors_label_is_visible_to_the_next_visitor(site):
    assert "brass instruments" not in site.get(NEURON).text
    r = site.post(NEURON + "/labels", json={"text": "brass instruments", "based_on": None, "author": "ann"},
                  headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 201, r.text
    assert "brass instruments" in site.get(NEURON).text


def test_editors_and_routes_that_did_not_opt_in_bypass_the_cache(site):
    cache = page_cache(site.app)
    site.get(NEURON)
    hits = cache.hits
    site.get(NEURON, headers={"Cookie": "microscope_editor=whatever"})
    site.get(NEURON, headers={"Authorization": "Bearer test-token"})
    site.get("/families")
    site.get("/families")  # not opted in: rendered every time
    site.get("/models/nope")
    site.get("/models/nope")  # errors are never kept
    assert cache.hits == hits
