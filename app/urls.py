"""The one place that builds every link, so URLs stay stable and consistent."""
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


def search(q: str = "", **params) -> str:
    return "/search" + _q(q=q, **params)


def as_json(url: str) -> str:
    path, sep, query = url.partition("?")
    if path == "/":
        path = "/index"
    return f"{path}.json{sep}{query}"
