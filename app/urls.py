"""The one place that builds every link, so URLs stay stable and consistent."""
import hashlib
import urllib.parse
from functools import cache as cache_fn
from functools import lru_cache
from urllib.parse import urlencode

from store.keys import UnitKey
from store.paths import ROOT

# a neuron page quotes its model's and layer's names ~50 times (every example's overlay, every edit form)
quote = lru_cache(maxsize=4096)(urllib.parse.quote)


def _q(**params) -> str:
    params = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(params) if params else ""


def home() -> str:
    return "/"


def model(name: str) -> str:
    return f"/models/{quote(name)}"


def layer(model_name: str, layer_name: str, page: int | None = None) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}" + _q(page=page if page and page > 1 else None)


def neuron(key: UnitKey) -> str:
    return f"/models/{quote(key.model)}/{quote(key.layer)}/{key.unit}"


def cache(path: str | None) -> str | None:
    return f"/cache/{path}" if path else None


def static(name: str) -> str:
    """A /static URL versioned by the file's content, so it can be cached as immutable."""
    return f"/static/{quote(name)}?v={_static_version(name)}"


@cache_fn
def _static_version(name: str) -> str:
    try:
        return hashlib.blake2b((ROOT / "static" / name).read_bytes(), digest_size=6).hexdigest()
    except OSError:
        return "0"


def search(q: str = "", **params) -> str:
    return "/search" + _q(q=q, **params)


def units_api(**params) -> str:
    """The units listing (app/views/units.py) with its filters, sort and page."""
    return "/api/units" + _q(**params)


def as_json(url: str) -> str:
    path, sep, query = url.partition("?")
    if path == "/":
        path = "/index"
    return f"{path}.json{sep}{query}"


def login(next_url: str | None = None) -> str:
    return "/login" + _q(next=next_url)


def logout() -> str:
    return "/logout"


def families() -> str:
    return "/families"


def family(name: str, page: int | None = None) -> str:
    return f"/families/{quote(name)}" + _q(page=page if page and page > 1 else None)


def example_heatmap(key: UnitKey, sign: str, rank: int) -> str:
    """The server-rendered overlay PNG of one dataset example's map."""
    return f"{neuron(key)}/examples/{sign}/{rank}/heatmap.png"


def map_overlay(key: UnitKey) -> str:
    """The neuron's activation over the world map, drawn by the server from its stored grid."""
    return f"{neuron(key)}/map.jpg"


def neuron_labels(key: UnitKey) -> str:
    return neuron(key) + "/labels"


def neuron_families(key: UnitKey) -> str:
    return neuron(key) + "/families"


def neuron_studies(key: UnitKey) -> str:
    return neuron(key) + "/studies"


def study(study_id: int) -> str:
    return f"/studies/{study_id}"


def study_label(study_id: int, labeller: str | None = None, review: bool = False) -> str:
    return f"/studies/{study_id}/label" + _q(labeller=labeller, review=1 if review else None)


def study_results(study_id: int, labeller: str | None = None) -> str:
    return f"/studies/{study_id}/results" + _q(labeller=labeller)


def study_csv(study_id: int, labeller: str | None = None) -> str:
    return f"/studies/{study_id}/results.csv" + _q(labeller=labeller)


def study_plot(study_id: int, labeller: str | None = None, fmt: str = "svg") -> str:
    return f"/studies/{study_id}/plot.{fmt}" + _q(labeller=labeller)


def emotions(model_name: str) -> str:
    return f"/models/{quote(model_name)}/emotions"


def emotion(model_name: str, word: str) -> str:
    return f"{emotions(model_name)}/{quote(word, safe='')}"


def attacks(model_name: str) -> str:
    return f"/models/{quote(model_name)}/attacks"


def attack_lab(model_name: str) -> str:
    return f"{attacks(model_name)}/try"


def words_index() -> str:
    return "/words"


def word(text: str) -> str:
    return f"/words/{quote(text, safe='')}"


def embeddings(model_name: str, layer_name: str, **params) -> str:
    return f"/embeddings/{quote(model_name)}/{quote(layer_name)}" + _q(**params)


def neighbours(model_name: str, layer_name: str, word_text: str, **params) -> str:
    return embeddings(model_name, layer_name) + "/neighbours" + _q(word=word_text, **params)


def arithmetic(model_name: str, layer_name: str, expr: str, **params) -> str:
    return embeddings(model_name, layer_name) + "/arithmetic" + _q(expr=expr, **params)


def regions(model_name: str, layer_name: str) -> str:
    return f"/regions/{quote(model_name)}/{quote(layer_name)}"


def probe(q: str = "", **params) -> str:
    return "/probe" + _q(q=q, **params)


def probe_image(**params) -> str:
    return "/probe/image" + _q(**params)


def modality(model_name: str, layer_name: str) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/modality"


def direction(model_name: str, layer_name: str, q: str = "", **params) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/direction" + _q(q=q, **params)


def layer_sorted(model_name: str, layer_name: str, sort: str, page: int | None = None) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}" + _q(sort=sort, page=page if page and page > 1 else None)


def directions(model_name: str, layer_name: str) -> str:
    """Where a direction is saved (POST)."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/directions"
