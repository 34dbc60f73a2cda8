"""Editor login: the editor token once, then a signed cookie; logout clears it."""
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from app import urls
from app.deps import SettingsDep
from app.forms import body_of, done
from app.security import COOKIE, NO_TOKEN, SESSION_SECONDS, EditorDep, current_editor, make_session, safe_next, token_ok
from app.web import error_page, respond

router = APIRouter()


class LoginIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="the name recorded with your changes")
    token: str = Field(min_length=1, max_length=512)
    next: str = "/"


@router.get("/login", name="login")
def login_page(request: Request, settings: SettingsDep, next: str = "/"):
    editor = current_editor(request)
    data = {"next": safe_next(next), "editing_enabled": bool(settings.editor_token),
            "editor": editor.name if editor and editor.via == "cookie" else None}
    return respond(request, "login.html", data)


@router.post("/login")
def login(request: Request, settings: SettingsDep, body: LoginIn = body_of(LoginIn)):
    target = safe_next(body.next)
    if not settings.editor_token:
        return error_page(request, 401, NO_TOKEN)
    if not token_ok(settings, body.token):
        data = {"next": target, "editing_enabled": True, "editor": None, "error": "Wrong editor token."}
        return respond(request, "login.html", data, status_code=401)
    name = " ".join(body.name.split())
    response = done(request, {"editor": name}, target)
    response.set_cookie(COOKIE, make_session(settings, name), max_age=SESSION_SECONDS, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request, editor: EditorDep):
    response = RedirectResponse(urls.home(), status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
