"""Security headers on every response, and no unsafe request from another site.

The Content-Security-Policy allows scripts only from our own /static (no inline script, no CDN),
forbids framing, plugins and foreign form targets. Writes (see app.security for the editor token and
CSRF tokens) are additionally refused when the browser itself says the request is cross-site.
"""
from urllib.parse import urlsplit

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
        if scope["method"] not in SAFE_METHODS and is_cross_site(Headers(scope=scope)):
            message = "Cross-site requests may not change this microscope."
            await error_page(Request(scope, receive), 403, message)(scope, receive, self.with_headers(send))
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
