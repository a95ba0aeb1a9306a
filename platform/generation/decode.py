"""The decode core: batched KV-cache decoding for offline inference and serving alike (no Ray, no HTTP).

One batch may mix any tasks, virtual-token counts and generation parameters. Prompts are left-padded so
every row's next token sits in the last column; padding is masked out and position ids count only real
positions, so a row's output does not depend on what it is batched with.

Each row (`DecodeRow`) carries its own parameters, generator, stop ids and strings, token budget,
`min_new_tokens` and log-probability setting, and counts its own tokens; `DecodeBatch` holds the
batch's shared tensors (logits, KV cache, mask, positions, seen ids) and runs one forward pass per step.
Nothing depends on a global step counter, so a batch that admits rows (prefill them, left-pad and concatenate
their cache rows) or lets finished ones go (index-select the cache rows) needs only to edit that state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from promptray.platform.data.batching import collate, to_device
from promptray.platform.data.dataset import Example
from promptray.platform.generation.kv_rows import (
    cut_left,
    join_caches,
    leading_padding,
    pad_left,
    select_cache,
    with_room,
)
from promptray.platform.generation.logprobs import Decode, TokenLogprob, text_offsets, token_logprobs
from promptray.platform.generation.sampling import GenerationParams, choose_tokens, process_logits
from promptray.platform.model.prompt_model import PromptLearningModel

__all__ = ["GenerationParams", "process_logits", "RowEvent", "DecodeRow", "DecodeBatch", "generate",
           "decode_rows", "decode_steps", "Prefill", "prefill_plain", "seen_tokens"]


@dataclass
class RowEvent:
    """What one row reports at one step."""

    text: str  # new text since the row's last event
    token_ids: list[int]  # new tokens of the returned text since the last event
    finish_reason: Optional[str] = None  # "stop" (EOS, a stop id or string) or "length"; None while running
    generated: int = 0  # tokens generated so far, an ending EOS or stop-string token included (usage)
    logprobs: Optional[list[TokenLogprob]] = None  # on the last event when asked: one per returned-text token


Prefill = Callable[[PromptLearningModel, Sequence[Example], int], tuple]
"""(model, examples, pad_id) -> (logits of each row's last position (B, V), KV cache, attention mask (B, T),
position ids (B, T)): the prompt pass. `prefill_plain` runs the whole prompts; serve.prefix_cache reuses
each task's cached prompt start."""


def prefill_plain(model: PromptLearningModel, examples: Sequence[Example], pad_id: int) -> tuple:
    """The prompt pass over the whole left-padded prompts (see `Prefill`)."""
    batch = to_device(collate(examples, pad_id, side="left"), model.device)
    emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (B, T, H)
    logits, past = model.step(emb, batch.attention_mask, batch.position_ids)  # (B, V)
    return logits, past, batch.attention_mask, batch.position_ids


def seen_tokens(examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """(B, T) real prompt token ids for the repetition penalty; virtual placeholders and padding are -1."""
    batch = collate(examples, pad_id, side="left")
    return torch.where((batch.virtual_ids >= 0) | (batch.attention_mask == 0), -1, batch.input_ids)  # (B, T)


class DecodeRow:
    """One row: parameters and state. `ids` holds every generated token (an ending EOS / stop id included;
    `len(ids)` is the row's usage count); `output_ids` those of its returned text (after a stop string, the
    tokens whose text starts before it; without logprobs, simply all but the token that completed it).
    With `decode` (ids -> text) the row reports its text as it grows and honours stop strings; without it,
    only its end.

    `min_new_tokens` (Hugging Face; NeMo's `min_tokens_to_generate`, OpenAI/vLLM's `min_tokens`): stop ids are
    masked out of the choice while fewer
    tokens are out (a per-row mask: transformers' MinNewTokensLengthLogitsProcessor counts from one prompt
    length for the whole batch, which rows that started at different steps cannot share), and a stop
    string counts only when it ends in a later token.

    ValueError when `params.stop` has strings but no `decode` is given."""

    def __init__(self, params: GenerationParams, eos_id: int, *, generator: Optional[torch.Generator] = None,
                 decode: Optional[Decode] = None):
        if params.stop and decode is None:
            raise ValueError("stop strings need a decode function")
        self.params, self.generator, self.decode = params, generator, decode
        self.stop_ids = sorted(set(params.extra_stop_ids) | ({eos_id} if params.stop_at_eos else set()))
        self.ids: list[int] = []
        self.trace: list[TokenLogprob] = []  # one per id when params.logprobs is set
        self.kept = 0  # len(output_ids) once finished
        self.finish_reason: Optional[str] = None  # "stop" (a stop id or string) or "length"
        self.emitted_text, self.emitted_ids = "", 0
        self.stop_floor = 0  # a stop string must end past this text offset (min_new_tokens)

    @property
    def done(self) -> bool:
        """Whether the row has finished (its finish_reason is set)."""
        return self.finish_reason is not None

    @property
    def output_ids(self) -> list[int]:
        """The tokens of the returned text: all ids while running; once finished, the first `kept`."""
        return self.ids[:self.kept] if self.done else list(self.ids)

    @property
    def may_stop(self) -> bool:
        """Whether a stop id may end the row now: at least min_new_tokens tokens are out."""
        return len(self.ids) >= self.params.min_new_tokens

    def advance(self, token: int, logprob: Optional[TokenLogprob]) -> Optional[RowEvent]:
        """Add one generated token; the event to report (None: nothing new to show yet)."""
        self.ids.append(token)
        if logprob is not None:
            self.trace.append(logprob)
        n, p = len(self.ids), self.params
        if token in self.stop_ids:  # chosen only when may_stop (see DecodeBatch)
            return self._finish("stop", n - 1)
        if self.decode is None:
            return self._finish("length", n) if n >= p.max_new_tokens else None
        text = self.decode(self.ids)
        if n == p.min_new_tokens:
            self.stop_floor = len(text)
        cut = self._stop_cut(text) if n > p.min_new_tokens else -1
        if cut >= 0:
            return self._finish("stop", self._tokens_before(cut), text[:cut])
        if n >= p.max_new_tokens:
            return self._finish("length", n, text)
        return self._emit(text)

    def _stop_cut(self, text: str) -> int:
        """Start of the first stop string that ends past `stop_floor`, or -1."""
        hits = [text.find(s, max(0, self.stop_floor - len(s) + 1)) for s in self.params.stop]
        return min((h for h in hits if h >= 0), default=-1)

    def _tokens_before(self, cut: int) -> int:
        """How many tokens' text starts before offset `cut` (the tokens of the returned text)."""
        if self.params.logprobs is None:
            return len(self.ids) - 1  # only log-probabilities need the exact count
        return sum(o < cut for o in text_offsets(self.ids, self.decode))

    def _emit(self, text: str) -> Optional[RowEvent]:
        hold = max((len(s) - 1 for s in self.params.stop), default=0)  # a stop string may be starting
        safe = len(text.rstrip("\ufffd")) - hold  # an incomplete character is not shown yet
        if safe <= len(self.emitted_text):
            return None
        event = RowEvent(text[len(self.emitted_text):safe], self.ids[self.emitted_ids:], generated=len(self.ids))
        self.emitted_text, self.emitted_ids = text[:safe], len(self.ids)
        return event

    def _finish(self, reason: str, kept: int, text: Optional[str] = None) -> RowEvent:
        self.finish_reason, self.kept = reason, kept
        logprobs = self.trace[:kept] if self.params.logprobs is not None else None
        if self.decode is None:
            return RowEvent("", [], reason, len(self.ids), logprobs)
        final = text if text is not None else self.decode(self.ids[:kept])
        return RowEvent(final[len(self.emitted_text):], self.ids[self.emitted_ids:kept], reason, len(self.ids),
                        logprobs)


class DecodeBatch:
    """A running batch: the prompt pass at construction, then `step()` until `done`.

    Holds `rows` (one `DecodeRow` per example) and, on the model's device: `seen` (B, S) long, the real prompt
    and generated ids (-1 for virtual placeholders and padding) for the repetition penalty; `logits` (B, V)
    float32, the next-token logits of each row; `past`, the KV cache; `mask` (B, T) long, the attention mask
    over the cache and new tokens; `pos`, the position ids of the last forward (the prompt pass's, then
    (B, 1)). Prompts are left-padded (`collate(side="left")`) so every row's next token is in the last column.

    A step is `choose()` (tokens and events) then `forward()`; between them rows may leave (`keep`), and
    between steps whole batches may join (`join`): platform/generation/scheduler.py runs a batch that way."""

    def __init__(self, model: PromptLearningModel, examples: Sequence[Example], rows: Sequence[DecodeRow],
                 pad_id: int, prefill: Prefill = prefill_plain):
        self.model, self.rows = model, list(rows)
        self.seen = seen_tokens(examples, pad_id).to(model.device)  # (B, T)
        self.logits, self.past, self.mask, self.pos = prefill(model, examples, pad_id)  # (B, V), cache, (B, T) x2
        self.past = with_room(self.past)  # steps write in place (kv_rows.RoomyLayer)
        self.chosen: Optional[torch.Tensor] = None  # (B,) tokens chosen by `choose`, not yet fed

    @property
    def done(self) -> bool:
        """Whether every row has finished."""
        return all(r.done for r in self.rows)

    def _banned(self) -> Optional[torch.Tensor]:
        """(B, V) stop ids of rows that have not yet generated min_new_tokens tokens; None: none."""
        held = [(i, r.stop_ids) for i, r in enumerate(self.rows) if not r.may_stop and r.stop_ids and not r.done]
        if not held:
            return None
        banned = torch.zeros(self.logits.shape, dtype=torch.bool, device=self.logits.device)
        for i, ids in held:
            banned[i, ids] = True
        return banned

    def _logprobs(self, nxt: torch.Tensor) -> list[Optional[TokenLogprob]]:
        out: list[Optional[TokenLogprob]] = [None] * len(self.rows)
        idx = [i for i, r in enumerate(self.rows) if r.params.logprobs is not None and not r.done]
        if idx:
            k = max(self.rows[i].params.logprobs for i in idx)
            for i, lp in zip(idx, token_logprobs(self.logits[idx], nxt[idx], k)):
                lp.top = lp.top[:self.rows[i].params.logprobs]
                out[i] = lp
        return out

    @classmethod
    def of_state(cls, model: PromptLearningModel, rows: Sequence[DecodeRow], seen: torch.Tensor,
                 logits: torch.Tensor, past, mask: torch.Tensor, pos: torch.Tensor) -> DecodeBatch:
        """A batch from a finished prompt pass (a `Prefill`'s logits (B, V), cache, mask (B, T), positions
        (B, t)) and seen ids (B, S): what the scheduler makes of newly prefilled rows before they join."""
        batch = cls.__new__(cls)
        batch.model, batch.rows, batch.seen = model, list(rows), seen
        batch.logits, batch.past, batch.mask, batch.pos = logits, with_room(past), mask, pos[:, -1:]  # pos (B, 1)
        batch.chosen = None
        return batch

    def choose(self) -> list[Optional[RowEvent]]:
        """Choose each row's next token from its logits and report one event (or None) per row (finished rows:
        None, their choice ignored). The choices are kept for `forward`."""
        rows = self.rows
        nxt = choose_tokens(self.logits, self.seen, [r.params for r in rows], [r.generator for r in rows],
                            self._banned())  # (B,)
        logprobs = self._logprobs(nxt)
        self.chosen = nxt
        return [None if r.done else r.advance(t, lp) for r, t, lp in zip(rows, nxt.tolist(), logprobs)]

    def forward(self) -> None:
        """Feed the chosen tokens (B,): the next forward pass, extending seen ids, mask, positions and cache."""
        nxt, self.chosen = self.chosen, None
        self.seen = torch.cat([self.seen, nxt[:, None]], dim=1)  # (B, S+1)
        self.mask = torch.cat([self.mask, torch.ones_like(nxt)[:, None]], dim=1)  # (B, T+1)
        self.pos = self.pos[:, -1:] + 1  # (B, 1)
        self.logits, self.past = self.model.step(self.model.token_embeddings(nxt[:, None]), self.mask, self.pos,
                                                 self.past)

    def step(self) -> list[Optional[RowEvent]]:
        """Choose each row's next token, report one event (or None) per row, and run the next forward pass
        unless every row is finished (finished rows are still computed, their tokens ignored)."""
        events = self.choose()
        if not self.done:
            self.forward()
        return events

    def keep(self, idx: Sequence[int]) -> None:
        """Keep only rows `idx` (in that order, at least one; their chosen tokens too) and drop the leading cache
        slots and seen columns no remaining row uses. Needs an `editable_cache`."""
        sel = torch.tensor(list(idx), dtype=torch.long, device=self.logits.device)  # (b,)
        mask, seen = self.mask[sel], self.seen[sel]  # (b, T), (b, S)
        cut = leading_padding(mask)
        self.past = select_cache(self.past, sel, cut)
        self.mask, self.logits, self.pos = cut_left(mask, cut), self.logits[sel], self.pos[sel]
        self.seen = cut_left(seen, min(leading_padding(seen >= 0), seen.shape[1] - 1))
        self.chosen = self.chosen[sel] if self.chosen is not None else None
        self.rows = [self.rows[i] for i in idx]

    def join(self, other: DecodeBatch) -> None:
        """Append `other`'s rows (caches, masks and seen ids left-padded to common lengths; positions are each
        row's own). Both batches must be between steps (no pending choice) and have `editable_cache`s."""
        ta, tb = self.mask.shape[1], other.mask.shape[1]
        sa, sb = self.seen.shape[1], other.seen.shape[1]
        T, S = max(ta, tb), max(sa, sb)
        self.past = join_caches(self.past, other.past, ta, tb)
        self.mask = torch.cat([pad_left(self.mask, T - ta), pad_left(other.mask, T - tb)])  # (B, T)
        self.seen = torch.cat([pad_left(self.seen, S - sa, -1), pad_left(other.seen, S - sb, -1)])  # (B, S)
        self.logits = torch.cat([self.logits, other.logits])  # (B, V)
        self.pos = torch.cat([self.pos[:, -1:], other.pos[:, -1:]])  # (B, 1)
        self.rows += other.rows


@torch.no_grad()
def decode_steps(model: PromptLearningModel, examples: Sequence[Example], rows: Sequence[DecodeRow], pad_id: int,
                 prefill: Prefill = prefill_plain) -> Iterator[list[Optional[RowEvent]]]:
    """Per step, one event (or None) per row; a row's last event has its finish_reason set."""
    model.eval()
    batch = DecodeBatch(model, examples, rows, pad_id, prefill)
    while not batch.done:
        yield batch.step()


def decode_rows(model: PromptLearningModel, examples: Sequence[Example], rows: Sequence[DecodeRow], pad_id: int,
                prefill: Prefill = prefill_plain) -> list[DecodeRow]:
    """Decode until every row is finished; the rows (their output_ids, trace, finish_reason)."""
    for _ in decode_steps(model, examples, rows, pad_id, prefill):
        pass
    return list(rows)


def generate(model: PromptLearningModel, examples: Sequence[Example], params: GenerationParams,
             pad_id: int, eos_id: int, prefill: Prefill = prefill_plain) -> list[list[int]]:
    """Generated token ids of each example (without the prompt; EOS and stop ids not included). Sampling
    draws from one generator seeded with `params.seed` for the whole batch."""
    gen = torch.Generator(model.device).manual_seed(params.seed) if params.seed is not None else None
    rows = [DecodeRow(params, eos_id, generator=gen) for _ in examples]
    return [r.output_ids for r in decode_rows(model, examples, rows, pad_id, prefill)]
