"""Dataset-example overlays drawn in the browser from the stored maps (static/heatmaps.js on a canvas), and the
server-rendered PNG in their place when JavaScript is off. The synthetic store's maps: top examples
[[1, 0], [0, 0.5]], bottom ones [[-1, 0], [0, 0.5]] (worker.synthetic.synthetic_maps, generation 1)."""
import pytest

pytestmark = pytest.mark.browser

CANVAS_ALPHA = """c => Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)
                        .filter((_, i) => i % 4 === 3)"""


def test_example_heatmaps_are_drawn_on_canvases_from_the_stored_maps(tab):
    page = tab.page
    page.goto("/models/synth/layer4/5")
    canvases = page.locator("section#examples canvas.heat")
    assert canvases.count() == 8
    page.wait_for_selector("section#examples canvas.heat[data-drawn]", state="attached")
    top, bottom = canvases.first, page.locator('section#examples canvas.heat[data-sign="bottom"]').first
    assert top.evaluate(CANVAS_ALPHA) == [230, 0, 0, 115]  # the positive part relative to its peak
    assert bottom.evaluate(CANVAS_ALPHA) == [230, 0, 0, 0]  # the negative part
    assert top.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, 1, 1).data.slice(0, 3))") == [
        255, 110, 0]
    page.locator("section#examples .ex").first.hover()
    page.wait_for_function("() => getComputedStyle(document.querySelector('canvas.heat')).opacity > 0.5")
    tab.shot("examples-heatmaps")


def test_without_javascript_the_server_renders_the_overlays(browser, live):
    context = browser.new_context(base_url=live.url, java_script_enabled=False)
    page = context.new_page()
    page.goto("/models/synth/layer4/5")
    overlays = page.locator("section#examples img.heat")
    assert overlays.count() == 8
    first = overlays.first
    assert first.get_attribute("src") == "/models/synth/layer4/5/examples/top/0/heatmap.png"
    first.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('img.heat').complete")
    assert first.evaluate("e => e.naturalWidth") == 2
    context.close()
