"""Typed errors of the prompt-learning engine.

Every error that comes from user input says what was received, where, and how to fix it. Errors that
collect several problems keep them as a list so callers (CLI, SDK, HTTP) can show all of them at once.
"""

from __future__ import annotations


class PromptrayError(Exception):
    """Base class of every error promptray raises on purpose.

    Every subclass pickles as it is (Ray sends an error raised in a task or actor to its caller pickled):
    unpickling restores its message and attributes without calling its `__init__`, whose signature may
    differ from its message's (e.g. required keyword arguments)."""

    def __reduce__(self):
        return _rebuild, (type(self), self.args, self.__dict__)


class ConfigError(PromptrayError, ValueError):
    """A configuration (task templates, training config, overrides) is invalid.

    `problems` lists every problem found, each naming the field, the received value and the fix.
    """

    def __init__(self, problems: list[str] | str, title: str = "invalid configuration"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.title = title
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{title} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):\n{lines}")


class DatasetError(PromptrayError, ValueError):
    """A data file or record is malformed; the message names the file and line."""


class PromptTableError(PromptrayError):
    """The prompt table cannot be read or written (missing task, corrupted object, conflict)."""


class BaseModelMismatchError(PromptTableError):
    """Prompts were trained on a different base model than the one they are loaded against."""


class StoreError(PromptTableError):
    """The storage behind a prompt table (a local folder or an S3 bucket) failed; the message names the
    table's location and endpoint, never credentials."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached (endpoint down, refused, timed out, or the server is failing)."""


class StoreAccessDeniedError(StoreError):
    """The store refused the request: missing or wrong credentials, or no permission on the bucket/prefix."""


class StoreNotFoundError(StoreError):
    """The bucket (or folder) a prompt table URI names does not exist."""


class TableConflictError(PromptTableError):
    """The table's manifest kept changing under a writer; the operation was not applied and can be retried."""


def _rebuild(cls: type, args: tuple, state: dict) -> PromptrayError:
    """A PromptrayError (or subclass) unpickled: its exception args and attributes, its `__init__` not run."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error
