"""The engine's one sampling-parameter type, `GenerationParams`, and the ranges of its values (no torch, so
that request schemas can take their bounds from here).

Names follow Hugging Face's `generate` (`max_new_tokens`, `min_new_tokens`, `temperature`, `top_k`, `top_p`,
`repetition_penalty`); `stop` and `logprobs` follow the OpenAI API. The front ends keep their users' names and
map them here in one place each: NeMo's `inference:` keys in platform/generation/infer_config.py
(`InferConfig.generation`), OpenAI's request fields in serve/decoding.py (`generation_params`). The value
ranges are defined once (`RANGES`); the front ends' pydantic fields take their bounds from it and may only
narrow them (a server's `max_tokens` cap, OpenAI's 5 `logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

MAX_LOGPROBS = 20  # top-k alternatives per token at most (OpenAI's completions route allows 5)


@dataclass(frozen=True)
class Range:
    """A parameter's valid interval: lower bound `ge` (closed) or `gt` (open), upper bound `le` (closed)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None

    def bounds(self, *, le: Optional[float] = None) -> dict[str, Any]:
        """The bounds as pydantic `Field` keywords (`Field(1.0, **RANGES["top_p"].bounds())`); `le`: a front
        end's own, tighter upper cap (the lower of it and the range's is used)."""
        upper = min((b for b in (self.le, le) if b is not None), default=None)
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", upper)) if v is not None}

    def problem(self, name: str, value: Optional[float]) -> Optional[str]:
        """A message when `value` is outside the range (None: valid, or not set)."""
        ok = value is None or ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                               and (self.le is None or value <= self.le))
        if ok:
            return None
        closed = self.ge is not None
        low = self.ge if closed else self.gt
        if self.le is None:
            return f"{name} must be {'>=' if closed else '>'} {low}, got {value}"
        return f"{name} must be in {'[' if closed else '('}{low}, {self.le}], got {value}"


RANGES = {"max_new_tokens": Range(ge=1), "min_new_tokens": Range(ge=0), "temperature": Range(ge=0, le=100),
          "top_k": Range(ge=0), "top_p": Range(gt=0, le=1), "repetition_penalty": Range(gt=0, le=100),
          "logprobs": Range(ge=0, le=MAX_LOGPROBS)}


@dataclass
class GenerationParams:
    """The decode core's per-row sampling parameters (Hugging Face's names; see the module docstring for the
    front ends' names). `problems()` lists invalid values as messages (nothing is raised here)."""

    max_new_tokens: int = 30
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop_at_eos: bool = True
    extra_stop_ids: list[int] = field(default_factory=list)
    min_new_tokens: int = 0  # EOS, stop ids and stop strings do not end a row before this many tokens
    stop: list[str] = field(default_factory=list)  # strings that end a row (cut from its text)
    logprobs: Optional[int] = None  # None: none; k >= 0: each token's log-probability and the k most likely

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: `greedy`, or temperature 0 (OpenAI's convention)."""
        return self.greedy or self.temperature == 0

    def problems(self) -> list[str]:
        """One message per out-of-range value ([] when all are valid), ranges from `RANGES`."""
        found = [r.problem(name, getattr(self, name)) for name, r in RANGES.items()]
        if 0 <= self.min_new_tokens and self.min_new_tokens > max(self.max_new_tokens, 0):
            found.append(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                         f"got {self.min_new_tokens}")
        return [msg for msg in found if msg]

    def sampling_key(self) -> tuple:
        """Rows with equal keys share one pass of `process_logits`."""
        return (self.is_greedy, self.temperature, self.top_k, self.top_p, self.repetition_penalty)
