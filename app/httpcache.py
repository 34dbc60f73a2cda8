"""HTTP caching: ETags and conditional GET (304) for pages and their JSON twins, and Cache-Control rules.

Pages change whenever the worker writes, so they are `no-cache` (a browser or proxy may keep them but
must revalidate; an unchanged page then costs a 304 without a body). Content-addressed files (the
cache's `images/`, and `/static/...?v=<hash>` URLs) never change and are `immutable`.
"""
import hashlib

from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
NOT_MODIFIED_HEADERS = ("cache-control", "etag", "vary", "content-location", "expires", "last-modified")


def cache_file_headers(path: str) -> dict[str, str]:
    """Cache-Control for a file of the image cache: content-addressed images never change, a neuron's
    own renders (`units/...`) are rewritten in place when a stage reruns."""
    return {"Cache-Control": IMMUTABLE if path.startswith("images/") else REVALIDATE}


class CachedStaticFiles(StaticFiles):
    """Static files; a versioned URL (`?v=<content hash>`, from `urls.static`) is cached forever."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        versioned = b"v=" in scope.get("query_string", b"")
        response.headers.setdefault("cache-control", IMMUTABLE if versioned else REVALIDATE)
        return response


def etag_matches(if_none_match: str, etag: str) -> bool:
    def bare(tag: str) -> str:
        return tag.strip().removeprefix("W/")

    return if_none_match.strip() == "*" or bare(etag) in {bare(t) for t in if_none_match.split(",")}


class ConditionalGetMiddleware:
    """Gives every successful GET an ETag (a hash of the body when the route set none), answers a
    matching If-None-Match with 304 and no body, and sets Cache-Control where the route set none."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, self.no_store(scope, send))
            return
        if_none_match = Headers(scope=scope).get("if-none-match")
        state = {"mode": "start", "start": None, "chunks": []}  # start -> buffer | pass | drop

        async def send_conditional(message):
            mode = state["mode"]
            if message["type"] not in ("http.response.start", "http.response.body"):
                await send(message)  # e.g. the test client's http.response.debug
            elif mode == "pass":
                await send(message)
            elif mode == "buffer":
                state["chunks"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    state["mode"] = "drop"
                    await self.finish(state["start"], b"".join(state["chunks"]), if_none_match, send)
            elif mode == "start":
                state["mode"] = await self.on_start(message, if_none_match, send)
                state["start"] = message

        await self.app(scope, receive, send_conditional)

    @staticmethod
    async def on_start(start, if_none_match: str | None, send) -> str:
        headers = MutableHeaders(scope=start)
        headers.setdefault("cache-control", REVALIDATE)
        if start["status"] != 200:
            await send(start)
            return "pass"
        if "etag" not in headers:
            headers.add_vary_header("Accept")  # a page and its JSON twin share a URL
            return "buffer"
        # a file: its route knows the ETag before the body, which need not be read on a match
        if if_none_match and etag_matches(if_none_match, headers["etag"]):
            await send(not_modified(start))
            await send({"type": "http.response.body", "body": b""})
            return "drop"
        await send(start)
        return "pass"

    @staticmethod
    async def finish(start, body: bytes, if_none_match: str | None, send) -> None:
        headers = MutableHeaders(scope=start)
        etag = 'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        headers["etag"] = etag
        if if_none_match and etag_matches(if_none_match, etag):
            await send(not_modified(start))
            await send({"type": "http.response.body", "body": b""})
            return
        await send(start)
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def no_store(scope, send):
        """Writes and HEADs: never cached."""
        if scope["type"] != "http" or scope["method"] == "HEAD":
            return send

        async def send_no_store(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("cache-control", "no-store")
            await send(message)

        return send_no_store


def not_modified(start: dict) -> dict:
    headers = Headers(raw=start["headers"])
    kept = [(k.encode(), v.encode()) for k, v in headers.items() if k in NOT_MODIFIED_HEADERS]
    return {"type": "http.response.start", "status": 304, "headers": kept}
