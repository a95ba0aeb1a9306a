"""Ray token authentication, handled explicitly.

Ray 2.60 behaves like this (ray/_private/authentication/authentication_token_setup.py, ray/scripts/scripts.py):

- `ray.init()` that starts a local cluster turns token auth on when `RAY_AUTH_MODE` is unset and writes a
  token to `~/.ray/auth_token` if there is none;
- `ray start --head` turns token auth on when `RAY_AUTH_MODE` is unset *and a token file exists*, so the
  same command gives an open cluster on a fresh machine and a token cluster where Ray ran before;
- HTTP clients (`ray job submit`, `JobSubmissionClient`) send the token only when `RAY_AUTH_MODE=token` is
  set in *their* environment; otherwise they get "401 Unauthorized: Missing authentication token".

promptray therefore never depends on that history. The SDK always sends a token when it can find one
(`auth_token=` argument, else `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`)
as an `Authorization: Bearer` header, which a cluster without auth ignores; the embedded cluster it starts
always uses token auth with its own token; the README's commands set `RAY_AUTH_MODE=token` and create the
token with `ray get-auth-token --generate` before `ray start`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Optional

TOKEN_ENV, TOKEN_PATH_ENV, MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"


def default_token_path() -> Path:
    """~/.ray/auth_token, where Ray looks for its token file by default."""
    return Path.home() / ".ray" / "auth_token"


def find_token(explicit: Optional[str] = None) -> Optional[str]:
    """The token to send: `explicit`, else $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else
    ~/.ray/auth_token (the order Ray's own loader uses); None when there is none."""
    if explicit:
        return explicit.strip()
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    path = Path(os.environ[TOKEN_PATH_ENV]) if os.environ.get(TOKEN_PATH_ENV) else default_token_path()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def auth_headers(token: Optional[str]) -> dict[str, str]:
    """{"Authorization": "Bearer TOKEN"} for a token, {} for none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_token() -> str:
    """A fresh random token (32 hex digits, the format `ray get-auth-token --generate` writes)."""
    return secrets.token_hex(16)


def token_env(token_path: Path) -> dict[str, str]:
    """Environment that makes Ray processes (and the jobs they run) use token auth with the token in
    `token_path`, whatever ~/.ray holds."""
    return {MODE_ENV: "token", TOKEN_PATH_ENV: str(token_path)}


def describe_auth_failure(address: str, token: Optional[str], detail: str) -> str:
    """The message for a cluster that refused the SDK (HTTP 401/403): what was sent, the server's first line
    of `detail`, and the ways to pass the right token."""
    sent = "a token that the cluster rejected" if token else "no token"
    return (f"the Ray cluster at {address} requires token authentication and the SDK sent {sent} "
            f"({detail.strip().splitlines()[0] if detail.strip() else 'HTTP 401/403'}). Pass "
            "Client(auth_token=...), or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, or put the cluster's token "
            "in ~/.ray/auth_token (`ray get-auth-token` on the head node prints it)")
