"""Rendering: every page is a template plus a dict, and the same dict is its JSON twin."""
from typing import Any

import jinja2
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

from app import urls
from app.sections import examples, stats, words
from app.security import csrf_field, current_editor
from store.paths import ROOT

DICT_ATTRIBUTES = frozenset(dir(dict))


class DictFirstEnvironment(jinja2.Environment):
    """`d.name` on a dict (every page's data is dicts) looks the key up at once. Jinja's own order, attribute
    first, raises and catches an AttributeError for each such lookup: a fifth of a neuron page's render. Names
    that are dict attributes (`d.items`) still go Jinja's way, so no template reads differently."""

    def getattr(self, obj, attribute):
        if type(obj) is dict and attribute not in DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


# auto_reload off: templates change only with a new release (and a server restart); on, every render stats
# each template file it uses (a neuron page: 9 files)
templates = Jinja2Templates(env=DictFirstEnvironment(loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
                                                     autoescape=jinja2.select_autoescape(), auto_reload=False))
templates.env.globals["urls"] = urls
# a neuron page's long lists, built in Python (128 examples, 70 words, 40 histogram bins)
templates.env.globals.update(example_items=examples.items_html, word_items=words.items_html,
                             histogram_bars=stats.histogram_bars)
templates.env.globals.update(current_editor=current_editor, csrf_field=csrf_field)  # edit forms


def wants_json(request: Request) -> bool:
    if request.scope.get("state", {}).get("want_json") or request.url.path.startswith("/api/"):
        return True  # a .json URL, or the JSON API (its errors are JSON too)
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def respond(request: Request, template: str, data: dict[str, Any], status_code: int = 200, **view: Any):
    """HTML for browsers, the same data as JSON for `.json` URLs or `Accept: application/json`.

    `view` holds template-only helpers (never part of the JSON twin)."""
    if wants_json(request):
        return JSONResponse(jsonable_encoder(data), status_code=status_code)
    settings = request.app.state.settings
    ctx = {"request": request, "site_name": settings.site_name, "data": data, **data, **view}
    response = templates.TemplateResponse(request, template, ctx, status_code=status_code)
    if current_editor(request) is not None:  # edit forms carry the editor's CSRF token: no shared caches
        response.headers["Cache-Control"] = "private, no-cache"
    return response


class JsonSuffixMiddleware:
    """`/a/b.json` is served by the `/a/b` route with JSON output; `/index.json` is the home page."""

    SKIP = ("/static/", "/cache/", "/openapi.json")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.endswith(".json") and not path.startswith(self.SKIP):
            path = path[: -len(".json")]
            if path == "/index":
                path = "/"
            scope = dict(scope, path=path, raw_path=path.encode())
            scope["state"] = {**scope.get("state", {}), "want_json": True}
        await self.app(scope, receive, send)


def error_page(request: Request, status_code: int, message: str, **extra) -> HTMLResponse | JSONResponse:
    data = {"error": message, "status": status_code, **extra}
    return respond(request, "error.html", data, status_code=status_code)
