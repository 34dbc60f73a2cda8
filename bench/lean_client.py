"""A lean HTTP/1.1 load client: one keep-alive connection per client, responses parsed by httptools (the C parser
uvicorn uses), bodies left compressed unless a check reads them.

Why: the load bench's client shares the two cores with the server it measures. httpx.AsyncClient spends about as
much CPU on a request as the server spends answering it (its pools, models, header classes and gzip decoding), so
at 4 clients the machine was saturated by the client as much as by the server, and latencies measured both. This
client asks the same of the server (GET, `Accept: */*`, `Accept-Encoding: gzip`, keep-alive) for a fraction of
the CPU; `bench/load.py --client httpx` still runs the old one, to compare.
"""
import asyncio
import gzip
import json
from urllib.parse import urlsplit

import httptools


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[bytes, bytes], content: bytes):
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self):
        body = self.content
        if self.headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        return json.loads(body)


class LeanConnection(asyncio.Protocol):
    """One connection; `get` sends a request and waits for its whole response (no pipelining)."""

    def __init__(self, host: str):
        self.request_head = f"HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n\r\n".encode()
        self.parser = httptools.HttpResponseParser(self)
        self.transport = None
        self.waiter: asyncio.Future | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []

    @classmethod
    async def open(cls, base: str) -> "LeanConnection":
        url = urlsplit(base)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(url.netloc), url.hostname, url.port or 80)
        return conn

    async def get(self, path: str) -> Response:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the server closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.headers, self.body = {}, []
        self.transport.write(b"GET " + path.encode() + b" " + self.request_head)
        return await self.waiter

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"unparseable response: {e}"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Response(self.parser.get_status_code(), self.headers, b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
