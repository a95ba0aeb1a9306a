"""What a scheduler (platform/generation/scheduler.py) admits and under which bounds: its `Limits`, its two
refusals (`QueueFullError`: load shed; `RequestTooLargeError`: never admissible), the record it keeps of a
submitted `Request`, and the `Output`s its steps report (no Ray, no HTTP)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Optional

from promptray.platform.data.dataset import Example
from promptray.platform.errors import PromptrayError
from promptray.platform.generation.decode import DecodeBatch, DecodeRow, RowEvent


class QueueFullError(PromptrayError):
    """The waiting queue is full: the request is refused (`retry_after_s`: a guess of when to try again)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(PromptrayError, ValueError):
    """A request that could never be admitted: its prompt + max_new_tokens exceed the KV budget."""


@dataclass(frozen=True)
class Limits:
    """A scheduler's bounds: running rows, KV tokens, waiting requests, prompt tokens prefilled per step, and
    (policy "static" only) how long an empty batch waits to fill. ValueError for a value below its minimum."""

    max_rows: int = 16
    kv_budget_tokens: int = 32768
    max_waiting: int = 64
    prefill_chunk_tokens: int = 256
    batch_wait_s: float = 0.0

    def __post_init__(self):
        bad = [f"{k}={v!r} (at least {low})" for k, v, low in
               (("max_rows", self.max_rows, 1), ("kv_budget_tokens", self.kv_budget_tokens, 1),
                ("max_waiting", self.max_waiting, 1), ("prefill_chunk_tokens", self.prefill_chunk_tokens, 1),
                ("batch_wait_s", self.batch_wait_s, 0)) if v < low]
        if bad:
            raise ValueError(f"invalid scheduler limits: {', '.join(bad)}")


@dataclass
class Output:
    """One thing a step reports for request `rid`: a row event, or the error that ended it."""

    rid: Hashable
    event: Optional[RowEvent] = None
    error: Optional[BaseException] = None


@dataclass(eq=False)
class Request:
    """A submitted request: its example and row, arrival time, KV reservation and prefill progress."""

    rid: Hashable
    example: Example
    row: DecodeRow
    arrived: float
    reserve: int  # prompt + max_new_tokens: the KV slots it may come to hold
    run_tokens: int  # prompt tokens a prefill runs (after a cached prompt start)
    filled: int = 0  # prompt positions prefilled so far (chunked prefill)
    state: Optional[DecodeBatch] = None  # its own 1-row batch while prefilled in chunks
    last_token_at: Optional[float] = None
    emitted: int = field(default=0)  # tokens generated when last looked at


def head(e: Example, n: int) -> Example:
    """The first n positions of an example."""
    return Example(e.taskname, e.input_ids[:n], e.virtual_ids[:n], e.loss_mask[:n])
