"""Fault injection for the Ray tests: a worker or the search driver exits on purpose, so that restarts from
checkpoints and resumed searches can be tested for real. Not part of any config: the tests set the
environment variable PROMPTRAY_TEST_FAULTS to a JSON object, e.g. '{"fail_at_step": 3}'.

Keys: fail_at_step (the train job's last worker exits once at this step), fail_after_publish (the train job's
rank 0 exits once after publishing, before its final report), stop_after_trials (the search driver stops as if
it had crashed after this many trials). The drivers read it and hand it to their workers explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from promptray.platform.errors import ConfigError

FAULTS_ENV = "PROMPTRAY_TEST_FAULTS"


@dataclass(frozen=True)
class Faults:
    """Where the run fails on purpose; the default fails nowhere."""

    fail_at_step: Optional[int] = None
    fail_after_publish: bool = False
    stop_after_trials: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """The faults as a plain dict (to pass to Ray workers)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Optional[Mapping[str, Any]]) -> Faults:
        """Faults from `to_dict`'s dict (None or empty: no faults); TypeError for an unknown key."""
        return cls(**dict(value or {}))


def faults_from_env(environ: Optional[Mapping[str, str]] = None) -> Faults:
    """The faults PROMPTRAY_TEST_FAULTS asks for (none when it is unset or empty); a ConfigError naming the
    variable when it is not a JSON object of the known keys with positive whole numbers (booleans for flags)."""
    text = (os.environ if environ is None else environ).get(FAULTS_ENV, "").strip()
    if not text:
        return Faults()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{FAULTS_ENV}: not JSON ({e.msg}); give e.g. '{{\"fail_at_step\": 3}}'") from None
    known = {f.name for f in fields(Faults)}
    if not isinstance(value, dict) or set(value) - known:
        raise ConfigError(f"{FAULTS_ENV}: got {text!r}; give a JSON object with keys among {sorted(known)}")
    problems = [f"{FAULTS_ENV}: {k}={v!r}; give a whole number >= 1" for k, v in value.items()
                if k != "fail_after_publish" and v is not None and (type(v) is not int or v < 1)]
    if not isinstance(value.get("fail_after_publish", False), bool):
        problems.append(f"{FAULTS_ENV}: fail_after_publish={value['fail_after_publish']!r}; give true or false")
    if problems:
        raise ConfigError(problems)
    return Faults(**value)
