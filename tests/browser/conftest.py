"""A real server (uvicorn subprocess) on a populated temp store, and Debian's Chromium through Playwright.

Every page a test opens is watched: a console error (a CSP violation shows up as one), an uncaught
script error or a JavaScript dialog (an injected alert) fails the test."""
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from app.labelling import save_label
from app.liveserver import LiveServer
from app.lookup import unit_by_key
from store.keys import UnitKey
from store.migrate import upgrade
from store.settings import Settings
from store.writes import open_store, register_model
from tests.synthetic import populate

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
HOSTILE_LABEL = "<script>alert(1)</script>"


def add_probe_model(store, tiny_rn, folder: Path) -> None:
    """Model 'tiny' (the tiny random-init ResNet CLIP, saved as a checkpoint) with its text read-out stored
    as `microscope worker attribution` leaves it, so the text probe has something to attribute to."""
    from worker.analyses.attribution import store_readout
    from worker.compute.layers import catalogue
    from worker.compute.models import load_model, save_checkpoint

    path = save_checkpoint(tiny_rn.model, folder / "tiny-rn.pt")
    loaded = load_model("tiny-rn", str(path), config_dirs=(MODEL_CONFIGS,))
    with store.sessions.begin() as s:
        register_model(s, "tiny", loaded.arch, str(path), loaded.image_size, catalogue(loaded))
    store_readout(store, "tiny", loaded, [MODEL_CONFIGS])


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_rn):
    """The server over a synthetic store: layer4 (70 units, two grid pages) and layer3, labels on two units;
    and the tiny model with a text read-out for the probe."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/system-deps")
    tmp = tmp_path_factory.mktemp("browser")
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp}/store.db", cache_dir=tmp / "cache",
                        editor_token="browser-token")
    upgrade(settings.db_url)
    store = open_store(settings)
    populate(store, "synth", {"layer4": 70, "layer3": 8})
    for unit, text in ((3, HOSTILE_LABEL), (5, "yellow things")):
        with store.sessions() as s:  # as the label form saves them (history, search document)
            save_label(s, unit_by_key(s, UnitKey("synth", "layer4", unit)).id, text, "tester", None)
    add_probe_model(store, tiny_rn, tmp)
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Watched:
    """A browser context's page plus everything that went wrong on it."""

    def __init__(self, context):
        self.context = context
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status} {r.url}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def watched(browser, live):
    """New pages in fresh browser contexts (clipboard allowed) against the live server."""
    contexts = []

    def open_context() -> Watched:
        ctx = browser.new_context(base_url=live.url, permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1200, "height": 900})
        contexts.append(Watched(ctx))
        return contexts[-1]

    yield open_context
    problems = [p for w in contexts for p in w.problems]
    for w in contexts:
        w.context.close()
    assert problems == [], problems


@pytest.fixture
def tab(watched) -> Watched:
    return watched()


@pytest.fixture
def hostile_label() -> str:
    return HOSTILE_LABEL


@pytest.fixture
def page_exists(live):
    """Whether the live server answers `path` with 200 (pages that other issues are still building)."""
    return lambda path: httpx.get(live.url + path, timeout=10).status_code == 200
