"""Optional API-key auth (bearer tokens from an env var and/or a file) and the request-body size limit.

Keys are compared in constant time and never logged; with no keys configured, auth is off.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from promptray.serve.errors import AuthError, BodyTooLargeError

log = logging.getLogger(__name__)


class ApiKeys:
    """The API keys a replica accepts as `Authorization: Bearer KEY` (OpenAI's scheme); none: auth is off.
    Keys are compared in constant time and never shown (repr, logs)."""

    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (else every request is let in)."""
        return bool(self._keys)

    def __repr__(self) -> str:  # never show the keys
        return f"ApiKeys({len(self._keys)} key(s))"

    @classmethod
    def load(cls, env_var: Optional[str], path: Optional[str]) -> ApiKeys:
        """Keys from the comma-separated environment variable `env_var` and the file `path` (one per line,
        blank lines and lines starting with # skipped); OSError when the file cannot be read."""
        keys = [k.strip() for k in os.environ.get(env_var or "", "").split(",")]
        if path:
            keys += [line.strip() for line in Path(path).read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        out = cls(keys)
        log.info("API-key auth %s", f"on ({len(out._keys)} key(s))" if out.enabled else "off")
        return out

    def valid(self, header: Optional[str]) -> bool:
        """Whether an Authorization header value carries a configured key ("Bearer KEY", scheme in any case);
        always True when auth is off."""
        if not self.enabled:
            return True
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, k) for k in self._keys)  # no early exit on a match position

    @staticmethod
    def check(request: Request) -> None:
        """FastAPI dependency: 401 unless the request carries a valid `Authorization: Bearer KEY`."""
        keys: Optional[ApiKeys] = getattr(request.app.state, "keys", None)
        if keys is not None and not keys.valid(request.headers.get("authorization")):
            raise AuthError("missing or invalid API key; send the header 'Authorization: Bearer <key>'")


class BodyLimit:
    """ASGI middleware: 413 for request bodies over the app's `max_body_bytes` (`app.state`).

    A declared Content-Length over the limit is refused before any of the body is read. A chunked body
    (no Content-Length) is read and counted as it arrives, at most limit + one chunk of it, and refused as
    soon as it passes the limit; a body within the limit is handed on to the app unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        limit = getattr(getattr(scope.get("app"), "state", None), "max_body_bytes", None)
        if scope["type"] != "http" or limit is None or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            return await _too_large(scope, receive, send, int(declared), limit, exact=True)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: let the app see it
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _too_large(scope, receive, send, size, limit, exact=not message.get("more_body"))
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)


async def _too_large(scope, receive, send, size: int, limit: int, exact: bool) -> None:
    has = f"{size} bytes" if exact else f"at least {size} bytes"
    err = BodyTooLargeError(f"request body has {has}; the limit is {limit}", limit=limit, size=size,
                            size_is_exact=exact)
    response = JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"})
    await response(scope, receive, send)
