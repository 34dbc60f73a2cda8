"""Write requests arrive as JSON (API clients) or as HTML forms (editors in a browser); both are
validated by the same pydantic model, and invalid input is a 422 that names the reason."""
from typing import TypeVar

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ValidationError

from app.security import CSRF_FIELD
from app.web import wants_json

T = TypeVar("T", bound=BaseModel)


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data"))


async def raw_input(request: Request) -> dict:
    """The request's fields as a dict: the JSON object, or the form fields (without the CSRF token).

    A JSON request gets JSON answers, errors included."""
    if is_form(request):
        form = await request.form()
        return {k: v for k, v in form.items() if k != CSRF_FIELD}
    request.scope.setdefault("state", {})["want_json"] = True
    try:
        data = await request.json()
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "send a JSON object or an HTML form", "type": "value_error"}]
        ) from None
    if not isinstance(data, dict):
        raise RequestValidationError([{"loc": ("body",), "msg": "expected a JSON object", "type": "dict_type"}])
    return data


def validate(schema: type[T], data: dict) -> T:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


async def read_input(request: Request, schema: type[T]) -> T:
    """The request body validated by `schema` (422 with the reason when it does not fit)."""
    return validate(schema, await raw_input(request))


def body_of(schema: type[T]):
    """A dependency that reads and validates the request body (JSON or form) as `schema`."""
    async def read(request: Request) -> T:
        return await read_input(request, schema)

    return Depends(read)


def done(request: Request, data: dict, redirect_to: str, status_code: int = 200):
    """After a write: a browser form goes back to a page (303), an API client gets the data as JSON."""
    if is_form(request) and not wants_json(request):
        return RedirectResponse(redirect_to, status_code=303)
    return JSONResponse(jsonable_encoder(data), status_code=status_code)
