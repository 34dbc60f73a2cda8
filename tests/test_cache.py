"""The image cache: content addressing, atomic writes, no escaping the cache root."""
from PIL import Image as PILImage

from store.cache import Cache
from store.keys import UnitKey


def test_put_image_is_content_addressed(tmp_path):
    cache = Cache(tmp_path)
    red = PILImage.new("RGB", (8, 8), "red")
    a, b = cache.put_image(red), cache.put_image(red.copy())
    assert a == b and a.startswith("images/") and a.endswith(".webp")
    assert cache.put_image(PILImage.new("RGB", (8, 8), "blue")) != a
    assert PILImage.open(cache.resolve(a)).size == (8, 8)
    assert not list(tmp_path.rglob(".tmp-*"))


def test_unit_images_live_under_the_neuron_key(tmp_path):
    cache = Cache(tmp_path)
    rel = cache.put_unit_image(UnitKey("m", "layer4", 7), "plain", PILImage.new("RGB", (4, 4)))
    assert rel == "units/m/layer4/7/plain.png"
    assert cache.resolve(rel).is_file()


def test_paths_that_escape_are_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    cache = Cache(tmp_path / "cache")
    for bad in ["../secret.txt", "/etc/passwd", "images/../../secret.txt", "", "a\x00b"]:
        assert cache.resolve(bad) is None


def test_cache_route_serves_with_long_cache_headers(client, settings):
    cache = client.app.state.cache
    rel = cache.put_image(PILImage.new("RGB", (8, 8), "green"))
    r = client.get(f"/cache/{rel}")
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    for bad in ["/cache/../pyproject.toml", "/cache/%2e%2e/%2e%2e/etc/passwd", "/cache/images/nope.webp"]:
        assert client.get(bad).status_code == 404
