"""What every promptray command line shares: overrides anywhere among the flags, and a missing optional
dependency said in one line (`pip install 'promptray[ray]'`, exit 2) instead of a traceback.

Used by `promptray` (jobs/cli.py), `python -m promptray.jobs.train` and `python -m promptray.jobs.search`.
"""

from __future__ import annotations

import argparse
import importlib
import math
from typing import Optional

from promptray.platform.errors import PromptrayError

RAY_EXTRA = ("ray", "fastapi", "fastapi_offline", "starlette")  # top-level modules of `promptray[ray]`


class MissingDependencyError(PromptrayError):
    """An optional dependency of a command is not installed; the message says what to install."""


def missing_extra(error: ModuleNotFoundError, needs: str) -> MissingDependencyError:
    """The one-line error ("{needs}, and 'ray' is not installed: pip install 'promptray[ray]'") for a module
    of the `ray` extra that is not installed; any other missing module is a real bug and `error` itself is
    raised again (its traceback kept)."""
    if (error.name or "").split(".")[0] not in RAY_EXTRA:
        raise error
    return MissingDependencyError(f"{needs}, and {error.name!r} is not installed: pip install 'promptray[ray]'")


def require_ray(needs: str) -> None:
    """Import Ray (Train and Tune), or raise MissingDependencyError saying what to install."""
    try:
        for module in ("ray", "ray.train", "ray.tune"):
            importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise missing_extra(e, needs) from None


def parse_anywhere(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse `argv`, with KEY=VALUE overrides allowed before, between and after the flags
    (`promptray train cfg.yaml --no-progress model.encoder_seq_length=12`). The command's parser needs an
    `overrides` positional (nargs="*"); any other unknown argument is the usual argparse error (exit 2)."""
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args


def seconds(text: str) -> float:
    """argparse type of a duration in seconds: a finite number >= 0 (not -5, nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"got {text}; give a finite number of seconds >= 0")
    return value
