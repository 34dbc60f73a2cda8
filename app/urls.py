"""The one place that builds every link, so URLs stay stable and consistent."""
import hashlib
from functools import cache as cache_fn
from urllib.parse import quote, urlencode

from app.keys import UnitKey


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
    from app.web import ROOT

    try:
        return hashlib.blake2b((ROOT / "static" / name).read_bytes(), digest_size=6).hexdigest()
    except OSError:
        return "0"


def search(q: str = "", **params) -> str:
    return "/search" + _q(q=q, **params)


def as_json(url: str) -> str:
    path, sep, query = url.partition("?")
    if path == "/":
        path = "/index"
    return f"{path}.json{sep}{query}"
