"""Shared-prefix batches: compute the constant start of each task's prompt once per batch, not once per row.

Two layouts, both exact (same loss and gradients as the padded batch):
- packed (`pack_batch`): every task's prefix once, then each row's remainder, all in ONE row with no
  padding and a block attention mask (a remainder sees its task's prefix and itself, causally). One
  forward pass; used while the packed row is short enough for a dense (M, M) mask.
- split (`split_shared_prefix`): the prefixes run first (one row per task), their KV cache is gathered
  to every row, then the right-padded remainders run against it. For long batches.

Every example of a task starts with the same tokens: its virtual tokens and the literal template text
before the first data field (e.g. `<|VIRTUAL_PROMPT_0|> Review:`). With 20 virtual tokens and short
inputs that prefix is often half of every row. `split_shared_prefix` finds, per task in a batch, the
longest run of identical leading positions that carries no loss; the model then runs those prefixes
once (one row per task), gathers their KV cache to every row, and runs only the rows' remainders.
Gradients flow back through the gathered cache into the shared prefix, so the loss and the gradients
are those of the full batch; only the work shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from promptray.platform.data.batching import Batch

MIN_PREFIX = 4  # shorter shared runs are not worth a second forward call
MAX_PACKED = 1024  # longest packed row: its dense (M, M) attention mask grows with the square
MAX_COST = 0.85  # split only when prefix + suffix work is at most this share of the full batch's


@dataclass
class PrefixSplit:
    """The split layout of a batch (`split_shared_prefix`): K task prefixes of length P, then the B rows'
    remainders of length S that read the prefixes' KV cache. All tensors on the batch's device."""

    prefix_ids: torch.Tensor  # (K, P) long; one row per task group with a shared prefix, right-padded
    prefix_virtual: torch.Tensor  # (K, P) long
    prefix_mask: torch.Tensor  # (K, P) long; 1 on each group's real prefix positions
    prefix_tasks: list[str]  # (K,)
    tasknames: list[str]  # (B,)
    row_group: torch.Tensor  # (B,) long; the prefix row whose cache each batch row reads
    cache_mask: torch.Tensor  # (B, P) long; 1 where a batch row sees the prefix cache
    input_ids: torch.Tensor  # (B, S) long; each row's remainder, right-padded
    virtual_ids: torch.Tensor  # (B, S) long
    loss_mask: torch.Tensor  # (B, S) bool
    attention_mask: torch.Tensor  # (B, P + S) long; cache slots then remainder
    position_ids: torch.Tensor  # (B, S) long; continuing each row's own positions


def _common_prefix(rows: torch.Tensor) -> int:
    """Length of the run of leading columns on which all rows (R, T) agree."""
    same = (rows == rows[:1]).all(dim=0)  # (T,)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else rows.shape[1]


def _group_prefix(batch: Batch, rows: list[int]) -> int:
    """Shared prefix length of one task's rows: identical tokens, before the first target's predictor."""
    idx = torch.tensor(rows)
    lengths = batch.attention_mask[idx].sum(-1)  # (R,)
    firsts = [int(m.nonzero()[0]) if bool(m.any()) else int(n) for m, n in zip(batch.loss_mask[idx], lengths)]
    limit = min(min(firsts) - 1, int(lengths.min()) - 1)  # hidden at t-1 predicts t; keep one row token
    common = min(_common_prefix(batch.input_ids[idx]), _common_prefix(batch.virtual_ids[idx]))
    return max(0, min(common, limit))


def shared_prefixes(batch: Batch) -> dict[str, int]:
    """taskname -> length of the prefix its rows share (only tasks with 2+ rows and a prefix worth sharing).
    Needs right padding (training batches): a left-padded batch shares nothing."""
    if len(batch) < 2 or bool((batch.attention_mask[:, 0] == 0).any()):
        return {}
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(batch.tasknames):
        groups.setdefault(name, []).append(i)
    shared = {name: _group_prefix(batch, rows) for name, rows in groups.items() if len(rows) > 1}
    return {name: p for name, p in shared.items() if p >= MIN_PREFIX}


def split_shared_prefix(batch: Batch) -> Optional[PrefixSplit]:
    """The batch as shared prefixes + right-padded remainders, or None when sharing would not save work.
    Rows of a task that appears once keep their full length."""
    B, T = batch.input_ids.shape
    shared = shared_prefixes(batch)
    if not shared:
        return None
    row_p = torch.tensor([shared.get(name, 0) for name in batch.tasknames])  # (B,)
    lengths = batch.attention_mask.sum(-1)  # (B,)
    P, S = max(shared.values()), int((lengths - row_p).max())
    if len(shared) * P + B * S > MAX_COST * B * T:
        return None
    return _build(batch, shared, row_p, P, S)


def _build(batch: Batch, shared: dict[str, int], row_p: torch.Tensor, P: int, S: int) -> PrefixSplit:
    names = list(shared)
    first_row = [batch.tasknames.index(n) for n in names]
    prefix_mask = torch.zeros(len(names), P, dtype=torch.long)  # (K, P)
    for k, n in enumerate(names):
        prefix_mask[k, :shared[n]] = 1
    prefix_ids = batch.input_ids[first_row, :P] * prefix_mask  # (K, P); pad slots hold id 0, never seen
    prefix_virtual = torch.where(prefix_mask.bool(), batch.virtual_ids[first_row, :P], -1)  # (K, P)
    row_group = torch.tensor([names.index(n) if n in shared else 0 for n in batch.tasknames])  # (B,)
    cache_mask = (torch.arange(P)[None, :] < row_p[:, None]).long()  # (B, P)
    cols = (row_p[:, None] + torch.arange(S)[None, :]).clamp(max=batch.input_ids.shape[1] - 1)  # (B, S)
    take = lambda t: t.gather(1, cols)  # noqa: E731  (B, T) -> (B, S)
    in_row = (row_p[:, None] + torch.arange(S)[None, :]) < batch.input_ids.shape[1]  # (B, S)
    suffix_attn = take(batch.attention_mask) * in_row  # (B, S)
    return PrefixSplit(
        prefix_ids=prefix_ids, prefix_virtual=prefix_virtual, prefix_mask=prefix_mask, prefix_tasks=names,
        tasknames=list(batch.tasknames), row_group=row_group, cache_mask=cache_mask,
        input_ids=take(batch.input_ids), virtual_ids=torch.where(suffix_attn.bool(), take(batch.virtual_ids), -1),
        loss_mask=take(batch.loss_mask) & suffix_attn.bool(),
        attention_mask=torch.cat([cache_mask, suffix_attn], dim=1),
        position_ids=take(batch.position_ids))


# ----------------------------------------------------------------------------- packed layout

@dataclass
class PackedBatch:
    """The packed layout of a batch (`pack_batch`): one row of M tokens (each task prefix once, then each
    row's remainder) with a block-causal (M, M) attention mask; N targets."""

    input_ids: torch.Tensor  # (1, M) long: prefixes, then each row's remainder, no padding
    virtual_ids: torch.Tensor  # (1, M) long
    position_ids: torch.Tensor  # (1, M) long: each token's position in its own row
    tasknames: list[str]  # (M,) the task of each packed token
    allowed: torch.Tensor  # (M, M) bool: query m may attend key n
    targets: torch.Tensor  # (1, M) bool: the token's hidden state predicts a target
    labels: torch.Tensor  # (N,) long: those targets, in packed order


def pack_batch(batch: Batch) -> Optional[PackedBatch]:
    """The batch as one packed row (each shared prefix once, no padding), or None when it has no shared
    prefix or would exceed MAX_PACKED tokens. Each row keeps only the tokens some target needs."""
    shared = shared_prefixes(batch)
    if not shared:
        return None
    lengths = batch.attention_mask.sum(-1).tolist()  # (B,)
    needed = [_last_target(batch.loss_mask[i]) for i in range(len(batch))]  # columns each row must run
    spans = [(n, 0, shared[n], -1 - k) for k, n in enumerate(shared)]  # (task, start, end, segment id)
    for i, n in enumerate(batch.tasknames):
        start = shared.get(n, 0)
        spans.append((n, start, max(start, min(needed[i], lengths[i])), i))  # empty when no targets
    if sum(end - start for _, start, end, _ in spans) > MAX_PACKED:
        return None
    return _pack(batch, spans, {n: -1 - k for k, n in enumerate(shared)})


def _last_target(loss_mask: torch.Tensor) -> int:
    """Columns a row must run: through the one that predicts its last target (at least one column)."""
    cols = loss_mask[1:].nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def _pack(batch: Batch, spans: list[tuple[str, int, int, int]], prefix_seg: dict[str, int]) -> PackedBatch:
    row_of = lambda seg: 0 if seg < 0 else seg  # noqa: E731  prefix segments copy a row of their task
    first_row = {n: batch.tasknames.index(n) for n in prefix_seg}
    ids, virt, pos, tasks, seg, home, col, tgt, labels = [], [], [], [], [], [], [], [], []
    for name, start, end, s in spans:
        r = first_row[name] if s < 0 else row_of(s)
        ids += batch.input_ids[r, start:end].tolist()
        virt += batch.virtual_ids[r, start:end].tolist()
        pos += batch.position_ids[r, start:end].tolist()
        tasks += [name] * (end - start)
        seg += [s] * (end - start)
        home += [prefix_seg.get(name, s) if s >= 0 else s] * (end - start)  # the prefix a row reads
        col += list(range(start, end))
        is_tgt = batch.loss_mask[r, start + 1:end + 1].tolist() if s >= 0 else [False] * (end - start)
        tgt += [bool(t) for t in is_tgt]
        labels += [t for t, m in zip(batch.input_ids[r, start + 1:end + 1].tolist(), is_tgt) if m]
    seg_t, home_t, col_t = torch.tensor(seg), torch.tensor(home), torch.tensor(col)  # (M,)
    same = seg_t[:, None] == seg_t[None, :]  # (M, M)
    reads_prefix = home_t[:, None] == seg_t[None, :]  # (M, M): a remainder token sees its task's prefix
    allowed = (same | reads_prefix) & (col_t[None, :] <= col_t[:, None])  # causal within each row
    t = lambda v: torch.tensor(v, dtype=torch.long)[None]  # noqa: E731  (1, M)
    return PackedBatch(t(ids), t(virt), t(pos), tasks, allowed, torch.tensor(tgt)[None], torch.tensor(labels))
