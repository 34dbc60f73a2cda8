"""Security headers on every response; hostile requests refused before any handler runs.

The Content-Security-Policy allows scripts only from our own /static (no inline script, no CDN),
forbids framing, plugins and foreign form targets. Writes (see app.security for the editor token and
CSRF tokens) are additionally refused when the browser itself says the request is cross-site. A NUL
character in a URL is refused with 422 (no name contains one, and Postgres text cannot hold one), and a
value the store cannot hold (a number past its integer range …) is a 422, not a 500.
"""
from urllib.parse import urlsplit

from sqlalchemy.exc import DataError
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request

from app.web import error_page

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",  # bar widths in the words section are style attributes, not code
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every response; answers 403 to unsafe cross-site requests."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = None
        if has_nul(scope):
            refusal = 422, "Invalid request: the URL contains a NUL character (%00)."
        elif scope["method"] not in SAFE_METHODS and is_cross_site(Headers(scope=scope)):
            refusal = 403, "Cross-site requests may not change this microscope."
        if refusal:
            await error_page(Request(scope, receive), *refusal)(scope, receive, self.with_headers(send))
            return
        await self.app(scope, receive, self.with_headers(send))

    @staticmethod
    def with_headers(send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    out.setdefault(name, value)
            await send(message)

        return send_with_headers


def has_nul(scope) -> bool:
    return "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")


def is_cross_site(headers: Headers) -> bool:
    """What the browser says (Sec-Fetch-Site, else Origin); clients that send neither are not browsers
    acting on someone's behalf, and still need the editor token for any write."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != headers.get("host", "")


def add_input_guards(app) -> None:
    """Values the store cannot hold are the request's fault: 422 with the reason, never a 500."""

    async def unstorable(request: Request, exc: Exception):
        reason = getattr(exc, "orig", exc)
        return error_page(request, 422, f"Invalid request: a value cannot be stored or looked up ({reason}).")

    app.add_exception_handler(DataError, unstorable)
    app.add_exception_handler(OverflowError, unstorable)
