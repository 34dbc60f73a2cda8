"""An in-process cache of rendered pages, valid exactly while the store's version is unchanged.

Every writing transaction bumps `store_version` (app.db.track_writes), so a page rendered at version n is
served again only while the store still reads n: a worker commit or a label edit is visible on the very
next request. Only routes that opt in (`dependencies=[CacheableDep]`: pages whose content is a function of
the store, the URL and the Accept header) are cached, only 200s without Set-Cookie, and never for requests
that carry a cookie or credentials (an editor sees their own forms). Hits keep ETag / 304 semantics.
"""
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from app.db import store_version
from app.httpcache import etag_matches, not_modified


class PageMark:
    """Set on the request by the middleware; a cacheable route flips `cacheable`."""

    __slots__ = ("cacheable",)

    def __init__(self):
        self.cacheable = False


async def mark_cacheable(request: Request) -> None:  # async: no thread-pool hop per request
    mark = request.scope.get("state", {}).get("page_cache")
    if mark is not None:
        mark.cacheable = True


CacheableDep = Depends(mark_cacheable)


@dataclass
class Entry:
    start: dict
    body: bytes


class PageCacheMiddleware:
    """LRU of finished responses keyed by (store version, scheme, host, path, query, Accept, gzip)."""

    def __init__(self, app, max_bytes: int = 64 * 2**20):
        self.app = app
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        self.size = 0
        self.version = -1  # entries all belong to this store version
        self.hits = self.misses = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "cookie" in headers or "authorization" in headers:
            await self.app(scope, receive, send)
            return
        version = await run_in_threadpool(store_version, scope["app"].state.engine)
        if version is None:
            await self.app(scope, receive, send)
            return
        key = (version, scope["scheme"], headers.get("host", ""), scope["path"], scope.get("query_string", b""),
               headers.get("accept", ""), "gzip" in headers.get("accept-encoding", ""))
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            await self.replay(entry, headers.get("if-none-match"), send)
            return
        self.misses += 1
        await self.app(scope, receive, self.recorder(scope, key, send))

    def recorder(self, scope, key, send):
        mark = scope.setdefault("state", {})["page_cache"] = PageMark()
        parts = {"start": None, "chunks": []}

        async def record(message):
            await send(message)
            if message["type"] == "http.response.start":
                parts["start"] = message
            elif message["type"] == "http.response.body" and parts["start"] is not None:
                parts["chunks"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.store(key, mark, parts["start"], b"".join(parts["chunks"]))

        return record

    def store(self, key, mark: PageMark, start: dict, body: bytes) -> None:
        if not mark.cacheable or start["status"] != 200 or "set-cookie" in Headers(raw=start["headers"]):
            return
        if len(body) > self.max_bytes // 16 or key[0] < self.version:
            return
        if key[0] > self.version:  # the store changed: every older page is dead
            self.entries.clear()
            self.size, self.version = 0, key[0]
        self.entries[key] = Entry(dict(start, headers=list(start["headers"])), body)
        self.size += len(body)
        while self.size > self.max_bytes:
            self.size -= len(self.entries.popitem(last=False)[1].body)

    @staticmethod
    async def replay(entry: Entry, if_none_match: str | None, send) -> None:
        etag = Headers(raw=entry.start["headers"]).get("etag")
        if if_none_match and etag and etag_matches(if_none_match, etag):
            await send(not_modified(entry.start))
            await send({"type": "http.response.body", "body": b""})
            return
        await send(dict(entry.start, headers=list(entry.start["headers"])))  # outer middleware may add to it
        await send({"type": "http.response.body", "body": entry.body})
