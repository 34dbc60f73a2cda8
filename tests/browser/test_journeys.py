"""The main journeys in headless Chromium against the real server. Screenshots go to test-artifacts/."""
import re

import httpx
import pytest

pytestmark = pytest.mark.browser


def test_home_to_model_to_layer_to_neuron(tab):
    page = tab.page
    page.goto("/")
    tab.shot("1-home")
    page.get_by_role("link", name="synth", exact=True).click()
    page.wait_for_url("**/models/synth")
    tab.shot("2-model")
    page.get_by_role("link", name="layer4", exact=True).click()
    page.wait_for_url("**/models/synth/layer4")
    assert page.locator(".grid li").count() == 64  # the first of two pages
    tab.shot("3-layer")
    page.locator('.grid a[href="/models/synth/layer4/5"]').click()
    page.wait_for_url("**/models/synth/layer4/5")
    assert page.locator("h1").inner_text() == "synth layer4 unit 5 — yellow things"
    for section in ("featurevis", "examples", "words", "stats"):
        assert page.locator(f"section#{section} .empty").count() == 0, section
    tab.shot("4-neuron")


def test_layer_pager_and_jump_to_unit(tab):
    page = tab.page
    page.goto("/models/synth/layer4")
    page.get_by_role("link", name=re.compile("next")).first.click()
    page.wait_for_url("**/models/synth/layer4?page=2")
    assert page.locator(".grid li").count() == 6
    page.fill("#unit", "42")
    page.press("#unit", "Enter")
    page.wait_for_url("**/models/synth/layer4/42")
    assert "unit 42" in page.locator("h1").inner_text()
    page.get_by_role("link", name=re.compile("unit 43")).click()
    page.wait_for_url("**/models/synth/layer4/43")
    tab.shot("jump-to-unit")


def test_hostile_label_is_shown_as_text_and_never_runs(tab, hostile_label):
    page = tab.page
    page.goto("/models/synth/layer4/3")
    assert hostile_label in page.locator("h1").inner_text()
    assert hostile_label in page.title()
    assert page.locator("main script").count() == 0  # the `dialog` watcher fails the test if alert() ran
    tab.shot("hostile-label")


def test_copy_link_then_open_it_in_a_fresh_browser(watched, live):
    first = watched()
    page = first.page
    page.goto("/models/synth/layer4/5")
    page.get_by_role("button", name="Copy link").click()
    page.get_by_role("status").filter(has_text="Link copied").wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"{live.url}/models/synth/layer4/5"
    fresh = watched()  # a new context: no cookies, history or cache shared with the first
    fresh.page.goto(copied)
    assert fresh.page.locator("h1").inner_text() == page.locator("h1").inner_text()
    fresh.shot("copied-link-opened")


def test_neuron_page_opengraph_tags(tab, live):
    page = tab.page
    page.goto("/models/synth/layer4/5")

    def meta(prop: str) -> str:
        return page.locator(f'meta[property="{prop}"], meta[name="{prop}"]').get_attribute("content")

    assert meta("og:title") == "synth layer4 unit 5 — yellow things"
    assert meta("og:url") == f"{live.url}/models/synth/layer4/5"
    assert meta("og:type") == "website" and "synth/layer4/5" in meta("og:description")
    image = meta("og:image")
    assert image.startswith(live.url + "/cache/")  # absolute, so link previews can fetch it
    fetched = httpx.get(image)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert meta("twitter:card") == "summary_large_image"


def test_keyboard_only_navigation(tab):
    page = tab.page
    page.goto("/")
    page.keyboard.press("Tab")
    skip = page.evaluate("document.activeElement.textContent")
    assert skip == "Skip to content"
    box = page.locator(".skip-link").bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0  # shown on focus, not left off-screen
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    for _ in range(30):  # Tab on from the main content to the model's link
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "/models/synth":
            break
    else:
        pytest.fail("Tab never reached the model link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # visible focus
    tab.shot("keyboard-focus")
    page.keyboard.press("Enter")
    page.wait_for_url("**/models/synth")
    page.keyboard.press("Tab")  # header first: the skip link again, then on through the page
    assert page.evaluate("document.activeElement.className") == "skip-link"


LOADED = """e => e.complete ? e.naturalWidth > 0 : new Promise(done => {
    e.addEventListener("load", () => done(e.naturalWidth > 0));
    e.addEventListener("error", () => done(false));
})"""


def test_every_image_has_alt_text_and_loads(tab):
    page = tab.page
    for url in ("/", "/models/synth", "/models/synth/layer4", "/models/synth/layer4/5", "/models/synth/layer3/2"):
        page.goto(url)
        page.wait_for_load_state("load")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
        imgs = page.locator("img")
        for i in range(imgs.count()):
            img = imgs.nth(i)
            assert img.get_attribute("alt") is not None, (url, img.get_attribute("src"))
            img.scroll_into_view_if_needed()  # a lazy image starts loading only now: wait for its load or error
            assert img.evaluate(LOADED), (url, img.get_attribute("src"))


def test_search(tab, page_exists):
    if not page_exists("/search?q=dog"):
        pytest.skip("no /search page in this build yet (issue 7)")
    page = tab.page
    page.goto("/")
    page.fill("#q", "yellow")  # the header's search box, on every page
    page.press("#q", "Enter")
    page.wait_for_url("**/search?q=yellow*")
    tab.shot("search")
    page.locator('a[href="/models/synth/layer4/5"]').first.click()  # the unit labelled "yellow things"
    page.wait_for_url("**/models/synth/layer4/5")


def test_text_probe(tab, page_exists):
    """Type a text, get the neurons it is attributed to (live, via probe.js and the JSON twin), follow one."""
    if not page_exists("/probe"):
        pytest.skip("no /probe page in this build yet (issue 7)")
    page = tab.page
    page.goto("/probe?model=tiny")
    field = page.locator("#probe-q")
    field.fill("a photo of a dog")
    field.press("Enter")
    page.wait_for_url("**/probe?*q=a+photo+of+a+dog*")
    first = page.locator('a[href^="/models/tiny/layer4/"]').first
    first.wait_for(timeout=60_000)  # the first probe loads the text tower on the server
    tab.shot("probe")
    href = first.get_attribute("href")
    first.click()
    page.wait_for_url(f"**{href}")
