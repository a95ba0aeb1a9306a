"""Typed errors of the serving layer; each carries the HTTP status the API answers with."""

from __future__ import annotations

from promptray.platform.errors import PromptrayError


class ServeError(PromptrayError):
    status = 400

    def __init__(self, message: str, **detail):
        super().__init__(message)
        self.message = message
        self.detail = detail  # extra JSON fields of the error body (field names, token counts, ...)


class UnknownTaskError(ServeError):
    status = 404


class UnknownVersionError(ServeError):
    status = 404


class InputFieldError(ServeError):
    status = 422


class InputTooLongError(ServeError):
    status = 422


class AuthError(ServeError):
    status = 401


class BodyTooLargeError(ServeError):
    status = 413
