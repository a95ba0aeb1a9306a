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

from promptray.serve.errors import AuthError

log = logging.getLogger(__name__)


class ApiKeys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:  # never show the keys
        return f"ApiKeys({len(self._keys)} key(s))"

    @classmethod
    def load(cls, env_var: Optional[str], path: Optional[str]) -> "ApiKeys":
        keys = [k.strip() for k in os.environ.get(env_var or "", "").split(",")]
        if path:
            keys += [line.strip() for line in Path(path).read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        out = cls(keys)
        log.info("API-key auth %s", f"on ({len(out._keys)} key(s))" if out.enabled else "off")
        return out

    def valid(self, header: Optional[str]) -> bool:
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


async def body_limit_middleware(request: Request, call_next):
    """413 for bodies over the app's `max_body_bytes` (by Content-Length; chunked bodies are read and counted)."""
    limit = getattr(request.app.state, "max_body_bytes", None)
    if limit is not None and request.method in ("POST", "PUT", "PATCH"):
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else len(await request.body())
        if size > limit:
            return JSONResponse({"error": f"request body has {size} bytes; the limit is {limit}",
                                 "limit": limit, "size": size}, status_code=413)
    return await call_next(request)
