"""The FastAPI app's HTTP plumbing (no Ray, no torch): error bodies, JSON bodies, offline API docs.

- `make_api()` builds the app with Swagger UI / ReDoc served from the `fastapi-offline` package's static files
  (under `/static-offline-docs`), so `/docs` works on a cluster without internet access.
- Every error, on every route, is OpenAI's error body (`errors.error_body`): typed `ServeError`s, pydantic
  validation errors (`param` = the field's dotted name), unknown routes and methods, and unexpected failures
  (a 500 that names no internals; the traceback goes to the log).
- A request body is read as JSON whatever its Content-Type says (curl's `-d` sends
  `application/x-www-form-urlencoded`); a body that is not JSON (an empty one included) is a 400 saying so.
- A validation error names its `param` wherever there is one: the field's dotted name, or for a rule
  between fields the `param` its error carries; an unknown parameter gets a did-you-mean from the route's
  own parameter names.
"""

from __future__ import annotations

import difflib
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from promptray.serve.errors import (
    InternalError,
    InvalidJsonError,
    RequestValidationFailed,
    RouteNotFoundError,
    ServeError,
)

log = logging.getLogger(__name__)
BODY_METHODS = ("POST", "PUT", "PATCH")


def make_api(**kwargs) -> FastAPI:
    """A FastAPI app with offline docs, the JSON-body rule and OpenAI-shaped errors."""
    api = FastAPIOffline(**kwargs)
    api.add_exception_handler(ServeError, _serve_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected_error)
    api.add_middleware(JsonBody)
    return api


def error_response(exc: ServeError) -> JSONResponse:
    """The HTTP answer of a ServeError: its status, OpenAI-shaped body and headers (`WWW-Authenticate: Bearer`
    on 401, `Retry-After` on a 503 of a full queue)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_problem(exc.errors(), known=_body_keys(request)))


def _body_keys(request: Request) -> dict:
    """The route's body parameters as a nested dict (name -> the same for a nested model, else {}), for
    did-you-mean suggestions; {} where the route has no pydantic body model."""
    route = request.scope.get("route")
    params = getattr(getattr(route, "dependant", None), "body_params", None) or []
    model = getattr(getattr(params[0], "field_info", None), "annotation", None) if params else None
    return _model_keys(model)


def _model_keys(model, depth: int = 0) -> dict:
    fields = getattr(model, "model_fields", None)
    if not fields or depth > 3:
        return {}
    keys = {}
    for name, f in fields.items():
        inner = [a for a in getattr(f.annotation, "__args__", ()) if hasattr(a, "model_fields")]
        inner += [b for a in getattr(f.annotation, "__args__", ()) for b in getattr(a, "__args__", ())
                  if hasattr(b, "model_fields")]
        keys[name] = _model_keys(inner[0], depth + 1) if inner else {}
    return keys


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 404:
        err: ServeError = RouteNotFoundError(f"no route {request.method} {request.url.path}; see /docs")
    else:
        err = ServeError(f"{request.method} {request.url.path}: {exc.detail}")
        err.status = exc.status_code
    return error_response(err)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return error_response(InternalError(f"internal error ({type(exc).__name__}); the server log has the details"))


def field_name(loc) -> str | None:
    """Dotted field name of a pydantic error location, without FastAPI's leading 'body'/'query'
    (None for the body as a whole)."""
    parts = list(map(str, loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc))
    return ".".join(parts) or None


# Plain words for pydantic's type errors of strict JSON types (serve/schemas.py)
TYPE_HINTS = {
    "float_type": "give a number (not a string or a boolean)",
    "int_type": "give an integer (not a string, a boolean or a fraction)",
    "bool_type": "give true or false (not a string or a number)",
    "finite_number": "NaN and infinity are not allowed; give a finite number",
    "field_value_type": "give a string, a number or true/false",
}
# pydantic's tags of the members of a template field's value type (serve/schemas.py FieldValue)
_FIELD_VALUE_TAGS = {"str": "string_type", "int": "int_type", "float": "float_type", "bool": "bool_type"}


def _merge_field_values(errors: list[dict]) -> list[dict]:
    """One error per template field whose value fits none of FieldValue's types (pydantic reports one per
    member, at `fields.<name>.str`, `.int`, ...)."""
    out, seen = [], set()
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if loc and _FIELD_VALUE_TAGS.get(str(loc[-1])) == e.get("type") and "fields" in loc:
            if loc[:-1] not in seen:
                seen.add(loc[:-1])
                out.append({**e, "loc": loc[:-1], "type": "field_value_type"})
        else:
            out.append(e)
    return out


def _json(value) -> str:
    """`value` as JSON spells it (null, true), else its repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _suggest(name: str, known: dict) -> str:
    """` (did you mean 'max_tokens'?)` for an unknown dotted name close to a known one, else ''."""
    parts = name.split(".")
    for part in parts[:-1]:
        known = known.get(part, known) if not part.isdigit() else known
    close = difflib.get_close_matches(parts[-1], list(known), n=1, cutoff=0.75)
    return f" (did you mean {'.'.join([*parts[:-1], close[0]])!r}?)" if close else ""


def _param(error: dict) -> str | None:
    """The parameter an error is about: its field, or, for a rule between fields, the one it names."""
    return field_name(error.get("loc", ())) or (error.get("ctx") or {}).get("param")


def _readable(error: dict, known: dict) -> str:
    name = _param(error)
    if error.get("type") == "extra_forbidden":
        return f"unknown parameter {name!r}: this route does not take it{_suggest(name, known)} (see /docs)"
    if error.get("type") in TYPE_HINTS:
        msg = f"{TYPE_HINTS[error['type']]}, got {_json(error.get('input'))}"
    else:
        msg = error.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{name}: {msg}" if name else msg


def validation_problem(errors: list[dict], known: dict | None = None) -> ServeError:
    """One error for all pydantic problems of a request: every problem in the message, the first one's
    parameter as `param` (`known`: the route's parameter names, for did-you-mean). A body that is missing,
    empty or not JSON is a 400 (`invalid_json`); one that is not an object gets its own plain message."""
    first = errors[0] if errors else {}
    kind, loc = first.get("type"), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return InvalidJsonError(f"the request body is not valid JSON ({reason}); send a JSON object")
    if loc == ("body",) and kind == "missing":
        return InvalidJsonError("the request body is empty; send a JSON object of the route's parameters "
                                "(see /docs)")
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return RequestValidationFailed("the request body must be a JSON object of the route's parameters "
                                       "(see /docs)", param=None)
    errors = _merge_field_values(errors)
    problems = [_readable(e, known or {}) for e in errors]
    return RequestValidationFailed("; ".join(problems), param=_param(errors[0]), problems=problems)


class JsonBody:
    """ASGI middleware: a request body is JSON, whatever Content-Type it was sent with (or without one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
