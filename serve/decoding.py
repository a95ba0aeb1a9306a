"""Batched decoding where every row has its own generation parameters, stop strings and token budget.

One forward pass per step serves the whole batch, whatever mix of tasks and parameters it holds; only
the cheap logit processing is done per group of rows with equal parameters. Each step yields one
`RowEvent` (or None) per row: the new text, and once a row is finished, why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from promptray.platform.dataset import Example
from promptray.platform.generation import GenerationParams, process_logits, seen_tokens
from promptray.platform.model import PromptLearningModel
from promptray.serve.schemas import SamplingParams


@dataclass
class RowEvent:
    text: str  # new text since the row's last event
    token_ids: list[int]  # new token ids since the last event
    finish_reason: Optional[str] = None  # "stop" (EOS or a stop string) or "length"; None while running


@dataclass
class RowState:
    params: SamplingParams
    generator: Optional[torch.Generator]
    ids: list[int] = field(default_factory=list)
    emitted_text: str = ""
    emitted_ids: int = 0
    done: bool = False


def _group_key(p: SamplingParams) -> tuple:
    return (p.is_greedy, p.temperature, p.top_k, p.top_p, p.repetition_penalty)


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, rows: Sequence[RowState]) -> torch.Tensor:
    """(B,) next token of each row from (B, V) logits, each row under its own parameters and generator."""
    nxt = torch.zeros(len(rows), dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(_group_key(r.params), []).append(i)
    for (greedy, temperature, top_k, top_p, rep), idx in groups.items():
        gp = GenerationParams(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=rep)
        scores = process_logits(logits[idx], seen[idx], gp)  # (b, V)
        if greedy:
            nxt[idx] = scores.argmax(-1)
            continue
        probs = scores.softmax(-1)  # (b, V)
        for j, i in enumerate(idx):
            nxt[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return nxt


def _advance(row: RowState, token: int, eos_id: int, decode: Callable[[list[int]], str]) -> Optional[RowEvent]:
    """Add one token to a row; the event to report (None: nothing printable yet)."""
    if token == eos_id:
        row.done = True
        return RowEvent(_rest(row, decode), row.ids[row.emitted_ids:], "stop")
    row.ids.append(token)
    text = decode(row.ids)
    cut = min((text.find(s) for s in row.params.stop if s in text), default=-1)
    if cut >= 0:
        row.done = True
        return RowEvent(text[len(row.emitted_text):cut] if cut > len(row.emitted_text) else "", [], "stop")
    if len(row.ids) >= row.params.max_tokens:
        row.done = True
        return RowEvent(_rest(row, decode), row.ids[row.emitted_ids:], "length")
    hold = max((len(s) - 1 for s in row.params.stop), default=0)  # a stop string may be starting
    safe = len(text) - hold if not text.endswith("\ufffd") else len(text.rstrip("\ufffd")) - hold
    if safe <= len(row.emitted_text):
        return None
    event = RowEvent(text[len(row.emitted_text):safe], row.ids[row.emitted_ids:])
    row.emitted_text, row.emitted_ids = text[:safe], len(row.ids)
    return event


def _rest(row: RowState, decode: Callable[[list[int]], str]) -> str:
    return decode(row.ids)[len(row.emitted_text):]


@torch.no_grad()
def stream_decode(model: PromptLearningModel, examples: Sequence[Example], params: Sequence[SamplingParams],
                  prefill: Callable, pad_id: int, eos_id: int,
                  decode: Callable[[list[int]], str]) -> Iterator[list[Optional[RowEvent]]]:
    """Per step, one event (or None) per row; a row's last event has its finish_reason set."""
    device = model.device
    rows = [RowState(p, torch.Generator(device).manual_seed(p.seed) if p.seed is not None else None)
            for p in params]
    seen = seen_tokens(examples, pad_id).to(device)  # (B, T)
    logits, past, mask, pos = prefill(model, examples, pad_id)  # (B, V), cache, (B, T), (B, T)
    for _ in range(max(p.max_tokens for p in params)):
        nxt = choose_tokens(logits, seen, rows)  # (B,)
        events = [None if r.done else _advance(r, int(t), eos_id, decode) for r, t in zip(rows, nxt.tolist())]
        yield events
        if all(r.done for r in rows):
            return
        seen = torch.cat([seen, nxt[:, None]], dim=1)  # (B, S+1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)  # (B, T+1)
        pos = pos[:, -1:] + 1  # (B, 1)
        logits, past = model.step(model.token_embeddings(nxt[:, None]), mask, pos, past)
