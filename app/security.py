"""Who may write: the editor token, the editor's login cookie, and CSRF tokens for forms.

Reads are public. A write needs either `Authorization: Bearer <editor token>` (API clients; a browser
never sends that header by itself, so no CSRF check is needed) or the editor cookie set by `/login`
together with a CSRF token bound to that cookie (`csrf_token` form field or `X-CSRF-Token` header).
Every secret is derived from `Settings.editor_token`: changing the token logs every editor out.
"""
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from markupsafe import Markup

from store.settings import Settings

COOKIE = "microscope_editor"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 30 * 24 * 3600
NO_TOKEN = "Editing is disabled on this server: it has no editor token (set MICROSCOPE_EDITOR_TOKEN)."
NEED_TOKEN = "Editing needs the editor token: send `Authorization: Bearer <token>` or log in at /login."


@dataclass(frozen=True)
class Editor:
    """Someone allowed to write. `name` is empty for API clients, who name the author per request."""

    name: str
    via: str  # token | cookie
    csrf: str = ""

    def author(self, claimed: str | None = None) -> str:
        """The name recorded with a change: the login name, or what an API client says (default 'api')."""
        if self.via == "cookie":
            return self.name
        return (claimed or "").strip() or "api"


def _key(settings: Settings) -> bytes | None:
    token = settings.editor_token
    return hashlib.sha256(b"microscope-editor-key:" + token.encode()).digest() if token else None


def _sign(key: bytes, purpose: str, message: str) -> str:
    return hmac.new(key, f"{purpose}|{message}".encode(), hashlib.sha256).hexdigest()


def token_ok(settings: Settings, token: str | None) -> bool:
    """Constant-time check of a presented editor token."""
    if not settings.editor_token or not token:
        return False
    return hmac.compare_digest(token.encode(), settings.editor_token.encode())


def make_session(settings: Settings, name: str, issued: int | None = None) -> str:
    """A signed cookie value naming the editor: issued-time.nonce.name.signature."""
    key = _key(settings)
    if key is None:
        raise ValueError(NO_TOKEN)
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    body = f"{issued or int(time.time())}.{secrets.token_hex(8)}.{encoded}"
    return f"{body}.{_sign(key, 'session', body)}"


def read_session(settings: Settings, value: str | None) -> str | None:
    """The editor's name from a cookie value, or None if it is forged, expired or malformed."""
    key = _key(settings)
    if key is None or not value or value.count(".") != 3:
        return None
    body, sig = value.rsplit(".", 1)
    if not hmac.compare_digest(sig, _sign(key, "session", body)):
        return None
    issued, _nonce, encoded = body.split(".")
    if not issued.isdigit() or int(issued) + SESSION_SECONDS < time.time():
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except ValueError:
        return None


def csrf_token(settings: Settings, session_value: str) -> str:
    """The CSRF token for one login session (a double-submit bound to the signed cookie)."""
    key = _key(settings)
    return _sign(key, "csrf", session_value) if key else ""


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def current_editor(request: Request) -> Editor | None:
    """The editor making this request, without any CSRF check (for showing edit forms)."""
    settings: Settings = request.app.state.settings
    if token_ok(settings, _bearer(request)):
        return Editor(name="", via="token")
    value = request.cookies.get(COOKIE)
    name = read_session(settings, value)
    if name is None:
        return None
    return Editor(name=name, via="cookie", csrf=csrf_token(settings, value))


async def require_editor(request: Request) -> Editor:
    """Dependency for every write: 401 without a valid token or login, 403 on a missing/wrong CSRF token."""
    settings: Settings = request.app.state.settings
    if not settings.editor_token:
        raise HTTPException(401, NO_TOKEN, headers={"WWW-Authenticate": "Bearer"})
    if _bearer(request) is not None:
        if not token_ok(settings, _bearer(request)):
            raise HTTPException(401, "Wrong editor token.", headers={"WWW-Authenticate": "Bearer"})
        return Editor(name="", via="token")
    editor = current_editor(request)
    if editor is None:
        raise HTTPException(401, NEED_TOKEN, headers={"WWW-Authenticate": "Bearer"})
    sent = request.headers.get(CSRF_HEADER) or await _form_csrf(request)
    if not sent or not hmac.compare_digest(sent, editor.csrf):
        raise HTTPException(403, "Missing or wrong CSRF token: reload the page and submit the form again.")
    return editor


async def _form_csrf(request: Request) -> str | None:
    if not request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return None
    value = (await request.form()).get(CSRF_FIELD)
    return value if isinstance(value, str) else None


def csrf_field(request: Request) -> Markup:
    """The hidden CSRF input for a write form (empty when the visitor is not logged in as an editor)."""
    editor = current_editor(request)
    if editor is None or not editor.csrf:
        return Markup("")
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, editor.csrf)


def safe_next(target: str | None, default: str = "/") -> str:
    """A redirect target on this site only (no scheme, no //host, no backslash tricks)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


EditorDep = Annotated[Editor, Depends(require_editor)]
