"""Typed errors of the prompt-learning engine.

Every error that comes from user input says what was received, where, and how to fix it. Errors that
collect several problems keep them as a list so callers (CLI, SDK, HTTP) can show all of them at once.
"""

from __future__ import annotations


class PromptrayError(Exception):
    """Base class of every error promptray raises on purpose."""


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
