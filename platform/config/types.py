"""The number types of every config section (training, search, ray, inference, SDK): one place for the rules.

- A boolean is not a number: `trainer.max_steps=true` is an error, not 1 step (pydantic would read it as 1).
- `Int`: a whole number; a float with no fraction (`1e3`) is read as that integer, any other float is an error.
- `Float`: finite; NaN and +-inf are errors for every float setting (`trainer.gradient_clip_val=inf`).
- Absurd values have documented upper bounds (README, "Ranges"): `MAX_LR`, `MAX_STEPS`, `MAX_COUNT`.

Use them as `Int`, `Float` with `Field(ge=..., le=...)` for each setting's own range.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AllowInfNan, BeforeValidator, Strict

MAX_LR = 10.0  # a learning rate above this is a typo (AdamW's useful range is about 1e-6 .. 1)
MAX_STEPS = 10**9  # optimizer steps, epochs, warmup / constant steps
MAX_COUNT = 10**6  # batch sizes, workers, devices, nodes, intervals, trials, tokens to generate


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean, not a number; give a number")
    return value


def _finite(value: Any) -> Any:
    """NaN and +-inf (also as YAML / override strings 'nan', 'inf') are refused before any range check."""
    value = _not_bool(value)
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        return value  # not a number: pydantic says so
    if number is not None and not math.isfinite(number):
        raise ValueError(f"{value} is not a finite number; give a finite number")
    return value


def _whole(value: Any) -> Any:
    value = _not_bool(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{value!r} is not a whole number; give an integer")
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_whole)]
Float = Annotated[float, BeforeValidator(_finite), AllowInfNan(False)]
StrictInt = Annotated[int, Strict()]  # in Union[StrictInt, Float] (count or fraction): 1.0 stays a float
