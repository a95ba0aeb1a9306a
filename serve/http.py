"""The FastAPI app's HTTP plumbing (no Ray, no torch): error bodies, JSON bodies, offline API docs.

- `make_api()` builds the app with Swagger UI / ReDoc served from the `fastapi-offline` package's static files
  (under `/static-offline-docs`), so `/docs` works on a cluster without internet access.
- Every error, on every route, is OpenAI's error body (`errors.error_body`): typed `ServeError`s, pydantic
  validation errors (`param` = the field's dotted name), unknown routes and methods, and unexpected failures
  (a 500 that names no internals; the traceback goes to the log).
- A request body is read as JSON whatever its Content-Type says (curl's `-d` sends
  `application/x-www-form-urlencoded`); a body that is not JSON is a 400 saying so.
"""

from __future__ import annotations

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
    """The HTTP answer of a ServeError: its status and OpenAI-shaped body (`WWW-Authenticate: Bearer` on 401)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_problem(exc.errors()))


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


def _readable(error: dict) -> str:
    name = field_name(error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return f"unknown parameter {name!r}: this route does not take it (see /docs)"
    msg = error.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{name}: {msg}" if name else msg


def validation_problem(errors: list[dict]) -> ServeError:
    """One error for all pydantic problems of a request: every problem in the message, the first one's
    field as `param`. A body that is missing, not JSON or not an object gets its own plain message."""
    first = errors[0] if errors else {}
    kind, loc = first.get("type"), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return InvalidJsonError(f"the request body is not valid JSON ({reason}); send a JSON object")
    if loc == ("body",) and kind in ("missing", "model_attributes_type", "dict_type", "model_type"):
        return RequestValidationFailed("the request body must be a JSON object of the route's parameters "
                                       "(see /docs)")
    problems = "; ".join(_readable(e) for e in errors)
    return RequestValidationFailed(problems, param=field_name(loc), problems=[_readable(e) for e in errors])


class JsonBody:
    """ASGI middleware: a request body is JSON, whatever Content-Type it was sent with (or without one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)

