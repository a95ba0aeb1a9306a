"""Typed errors of the serving layer and the one error body every route answers with.

Every 4xx/5xx, on every route, has OpenAI's error shape (https://platform.openai.com/docs/guides/error-codes):
`{"error": {"message": str, "type": str, "param": str | null, "code": str | null, ...}}`, so the official
`openai` client shows our message. Extra keys inside `error` (token counts, known tasks) are ours.
"""

from __future__ import annotations

from typing import Optional

from promptray.platform.errors import PromptrayError


def error_body(message: str, *, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None, **detail) -> dict:
    """The JSON body of an error response (OpenAI's shape, plus `detail` keys inside `error`)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **detail}}


class ServeError(PromptrayError):
    """A request the server answers with `status` and an error body of `type`/`code`."""

    status = 400
    type = "invalid_request_error"
    code: Optional[str] = None

    def __init__(self, message: str, *, param: Optional[str] = None, **detail):
        super().__init__(message)
        self.message, self.param = message, param
        self.detail = detail  # extra JSON keys of the error (field names, token counts, ...)

    def body(self) -> dict:
        """The JSON error body, OpenAI's shape: {"error": {message, type, param, code, ...detail}}."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code, **self.detail)

    def headers(self) -> Optional[dict]:
        """HTTP headers of the answer (`WWW-Authenticate: Bearer` for a 401, `Retry-After` for a 503 of a full
        queue); None: none."""
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else None


class UnknownTaskError(ServeError):
    """No current task of that name in the prompt table (404; OpenAI's model_not_found)."""

    status, type, code = 404, "not_found_error", "model_not_found"


class UnknownVersionError(ServeError):
    """The task has no such version, or it cannot be read from the table (404)."""

    status, type, code = 404, "not_found_error", "version_not_found"


class InputFieldError(ServeError):
    """An input misses a field of its task's template or has one the template does not know (422)."""

    status, code = 422, "invalid_fields"


class InputTooLongError(ServeError):
    """The prompt (virtual tokens included) plus max_tokens exceeds the model's positions, or the prompt the
    server's max_prompt_tokens, or prompt plus max_tokens its KV budget (422)."""

    status, code = 422, "context_length_exceeded"


class RequestValidationFailed(ServeError):
    """The body does not fit the route's schema (pydantic errors, each named by its dotted field)."""

    status, code = 422, "invalid_value"


class InvalidJsonError(ServeError):
    """The request body is not valid JSON (400)."""

    status, code = 400, "invalid_json"


class AuthError(ServeError):
    """No API key, or one that is not configured, while keys are required (401)."""

    status, type, code = 401, "authentication_error", "invalid_api_key"


class BodyTooLargeError(ServeError):
    """The request body exceeds the server's max_body_bytes (413)."""

    status, code = 413, "request_too_large"


class RouteNotFoundError(ServeError):
    """No route at that URL (404)."""

    status, type, code = 404, "not_found_error", "unknown_url"


class TaskModelMismatchError(ServeError):
    """The task version exists in the table but was trained on another base model than this server runs:
    the server cannot answer it (a server-side conflict, not a missing task)."""

    status, type, code = 409, "server_error", "base_model_mismatch"


class ServerNotReadyError(ServeError):
    """The replica could not start serving (e.g. no task of the table fits its base model)."""

    status, type, code = 503, "server_error", "server_misconfigured"


class InternalError(ServeError):
    """An unexpected failure (500): the answer names only the exception type; the server log has the rest."""

    status, type, code = 500, "server_error", "internal_error"


class ServerBusyError(ServeError):
    """The replica's waiting queue is full (503, load shed): the answer carries `Retry-After` (seconds, RFC 9110
    section 10.2.3) and `retry_after_s` in the body."""

    status, type, code = 503, "server_error", "server_overloaded"

    def __init__(self, message: str, *, retry_after_s: int, **detail):
        super().__init__(message, retry_after_s=retry_after_s, **detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> Optional[dict]:
        return {"Retry-After": str(self.retry_after_s)}
