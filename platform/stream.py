"""What the decode core reports per row and step (platform/generation.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from promptray.platform.logprobs import TokenLogprob


@dataclass
class RowEvent:
    text: str  # new text since the row's last event
    token_ids: list[int]  # new tokens of the returned text since the last event
    finish_reason: Optional[str] = None  # "stop" (EOS, a stop id or string) or "length"; None while running
    generated: int = 0  # tokens generated so far, an ending EOS or stop-string token included (usage)
    logprobs: Optional[list[TokenLogprob]] = None  # on the last event when asked: one per returned-text token
