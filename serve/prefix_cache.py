"""Serving prefix cache: the KV cache of each task version's constant prompt start, computed once and reused.

Every request of a task starts with the same tokens: a BOS when the task version was trained with one
(`encoding.TaskEncoding.add_bos`), its virtual tokens and the literal template text before the first data
field (e.g. `<|VIRTUAL_PROMPT_0|> Review:`). `PrefixCache` runs that start once per
task version (one row, no padding) and keeps its per-layer keys and values. A generation batch that mixes
tasks then assembles each row's cache from its task's entry (shorter prefixes padded with masked slots),
runs only the left-padded remainders against it, with position ids continuing each row's own positions,
and decodes as usual. Causal attention makes this exact: the cached keys/values of positions 0..k-1
depend only on tokens 0..k-1, which the request shares (checked token by token for every row).

Models whose cache is not a plain growing `DynamicLayer` cache (sliding windows, linear attention,
quantized caches; `generation.kv_rows.editable_cache`) fall back to the plain prompt pass
(`generation.prefill_plain`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from promptray.platform.data.batching import collate, to_device
from promptray.platform.data.dataset import Example, Tokenization, encode_chunks
from promptray.platform.data.templates import TaskTemplate, constant_start, render_parts
from promptray.platform.generation.decode import prefill_plain
from promptray.platform.generation.kv_rows import editable_cache, make_cache
from promptray.platform.model.prompt_model import PromptLearningModel

log = logging.getLogger(__name__)


@dataclass
class TaskPrefix:
    """The cached prompt start of one task version (`key`: its name in the model's prompt bank)."""

    key: str
    input_ids: list[int]  # (P,) placeholders at virtual positions
    virtual_ids: list[int]  # (P,) row of the task's prompt, -1 for real tokens
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (1, heads, P, d)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached keys and values."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def prefix_tokens(template: TaskTemplate, tokenizer, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, virtual_ids) of the constant start of a task's inference prompts: everything before the
    first data field (after a BOS with `add_bos`). A trailing text token is left out: the tokenizer may merge it
    with the field's text."""
    chunks = render_parts(constant_start(template.parts), {}, template.target_field, inference=True)
    ids, vids, _ = encode_chunks(chunks, Tokenization.of(tokenizer), False, add_bos, False)
    if chunks and chunks[-1].kind != "virtual" and ids:
        ids, vids = ids[:-1], vids[:-1]
    return ids, vids


def shared_length(example: Example, prefix: Optional[TaskPrefix]) -> int:
    """How many leading positions of `example` the cached prefix covers (at least one token is left to run)."""
    if prefix is None:
        return 0
    limit = min(len(prefix), len(example) - 1)
    k = 0
    while k < limit and example.input_ids[k] == prefix.input_ids[k] and \
            example.virtual_ids[k] == prefix.virtual_ids[k]:
        k += 1
    return k


def _row_cache(prefixes: Sequence[Optional[TaskPrefix]], ks: list[int], P: int):
    """A DynamicCache of B rows and P slots: row i holds its prefix's first P slots (zero-padded), gathered
    from one stack of the batch's distinct prefixes per layer. Slots at or after ks[i] are masked out by
    the caller's attention mask (rows with ks[i] == 0 attend to none of them)."""
    distinct = list({id(p): p for p, k in zip(prefixes, ks) if k > 0}.values())
    slot = torch.tensor([next(j for j, d in enumerate(distinct) if d is p) if k > 0 else 0
                         for p, k in zip(prefixes, ks)], device=distinct[0].layers[0][0].device)  # (B,)

    def stacked(li: int, kv: int) -> torch.Tensor:
        rows = [d.layers[li][kv][0, :, :P] for d in distinct]  # each (heads, <=P, d)
        return torch.stack([F.pad(r, (0, 0, 0, P - r.shape[1])) for r in rows])  # (K, heads, P, d)

    layers = [(stacked(li, 0)[slot], stacked(li, 1)[slot]) for li in range(len(distinct[0].layers))]
    return make_cache(layers)  # (B, heads, P, d) per layer


@torch.no_grad()
def prefill_with_prefixes(model: PromptLearningModel, examples: Sequence[Example],
                          prefixes: Sequence[Optional[TaskPrefix]], pad_id: int) -> tuple:
    """The prompt pass (see `generation.Prefill`) with each row's cached prefix and only its remainder run."""
    ks = [shared_length(e, p) for e, p in zip(examples, prefixes)]
    P = max(ks, default=0)
    if P == 0:
        return prefill_plain(model, examples, pad_id)
    rest = [Example(e.taskname, e.input_ids[k:], e.virtual_ids[k:], e.loss_mask[k:]) for e, k in zip(examples, ks)]
    device = model.device
    batch = to_device(collate(rest, pad_id, side="left"), device)  # (B, S)
    k_t = torch.tensor(ks, device=device)  # (B,)
    cache_mask = (torch.arange(P, device=device)[None, :] < k_t[:, None]).long()  # (B, P); holes: shorter prefixes
    mask = torch.cat([cache_mask, batch.attention_mask], dim=1)  # (B, P + S)
    pos = batch.position_ids + k_t[:, None]  # (B, S): continuing each row's own positions
    emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (B, S, H)
    logits, past = model.step(emb, mask, pos, _row_cache(prefixes, ks, P))  # (B, V)
    return logits, past, mask, pos


class PrefixCache:
    """Task version key -> its cached prompt start. Switches itself off for models without a plain cache."""

    def __init__(self, model: PromptLearningModel, tokenizer, enabled: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.enabled = enabled
        self._entries: dict[str, Optional[TaskPrefix]] = {}
        self.rows = 0  # rows prefilled through `prefill` (metrics)
        self.hits = 0  # of those, rows whose prompt start came from the cache

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Optional[TaskPrefix]:
        """The cached prefix of task version `key`; None when it has none or is not cached."""
        return self._entries.get(key)

    def nbytes(self, key: str) -> int:
        """Bytes of `key`'s cached prefix (0 when none)."""
        entry = self._entries.get(key)
        return entry.nbytes if entry is not None else 0

    @torch.no_grad()
    def add(self, key: str, template: TaskTemplate, *, add_bos: bool = False) -> Optional[TaskPrefix]:
        """Compute and keep the prefix of task version `key` (already in the model's prompt bank); `add_bos`:
        whether the task's prompts start with BOS (as it was trained), so the prefix starts with it too."""
        if not self.enabled:
            return None
        ids, vids = prefix_tokens(template, self.tokenizer, add_bos)
        entry = None
        if ids:
            dev = self.model.device
            ids_t, vids_t = torch.tensor([ids], device=dev), torch.tensor([vids], device=dev)  # (1, P)
            emb = self.model.embed(ids_t, vids_t, [key])  # (1, P, H)
            _, past = self.model.step(emb, torch.ones(1, len(ids), dtype=torch.long, device=dev),
                                      torch.arange(len(ids), device=dev)[None])
            if not editable_cache(past):
                log.warning("prefix cache switched off: %s's KV cache is not a plain DynamicLayer cache",
                            type(self.model.lm).__name__)
                self.enabled, self._entries = False, {}
                return None
            entry = TaskPrefix(key, ids, vids, [(layer.keys, layer.values) for layer in past.layers])
        self._entries[key] = entry
        return entry

    def drop(self, key: str) -> None:
        """Forget `key`'s prefix (nothing happens if none is cached)."""
        self._entries.pop(key, None)

    def prefill(self, model: PromptLearningModel, examples: Sequence[Example], pad_id: int) -> tuple:
        """A `generation.Prefill` that uses the cached prefixes of the examples' tasks (plain when off); counts
        the rows it prefills (`rows`) and those that found their prompt start cached (`hits`)."""
        self.rows += len(examples)
        if not self.enabled:
            return prefill_plain(model, examples, pad_id)
        prefixes = [self._entries.get(e.taskname) for e in examples]
        self.hits += sum(shared_length(e, p) > 0 for e, p in zip(examples, prefixes))
        return prefill_with_prefixes(model, examples, prefixes, pad_id)

    def run_tokens(self, example: Example) -> int:
        """How many prompt tokens of `example` a prefill runs (those after its cached prompt start)."""
        if not self.enabled:
            return len(example)
        return len(example) - shared_length(example, self._entries.get(example.taskname))
