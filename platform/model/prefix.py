"""Shared-prefix batches: compute the constant start of a group of rows once per batch, not once per row.

Two layouts, both exact (same loss and gradients as the padded batch):
- packed (`pack_batch`): every group's prefix once, then each row's remainder, all in ONE row with no
  padding and a block attention mask (a remainder sees its group's prefix and itself, causally). One
  forward pass; used while the packed row is short enough for a dense (M, M) mask.
- split (`split_shared_prefix`): the prefixes run first (one row per group), their KV cache is gathered
  to every row, then the right-padded remainders run against it. For long batches.

The groups (`shared_prefixes`), one grouping for both layouts:
- Rows identical up to their first target (the L rows of a label-ranking record, one per candidate answer:
  platform/generation/ranking.py) form a group of their own that shares its whole prompt: the prompt runs
  once per record and each row's remainder is the last prompt token (whose hidden state predicts the first
  answer token) and its answer. Scoring L labels then costs one prompt and L short answers, not L full rows.
  The record prompts of a task share its start in turn (`PrefixSplit.outer`): the split layout applied to
  the prefix rows, so the task's start runs once per batch, each record's text once, each answer once.
- The other rows of a task form the task's group: every example of a task starts with the same tokens, its
  virtual tokens and the literal template text before the first data field (e.g. `<|VIRTUAL_PROMPT_0|>
  Review:`). With 20 virtual tokens and short inputs that prefix is often half of every row. A training
  batch of distinct records has only these per-task groups.
A group's prefix is the longest run of identical leading positions of its rows that carries no loss and
ends before the position that predicts the first target. The model runs those prefixes once, gathers their
KV cache to every row, and runs only the rows' remainders. Gradients flow back through the gathered cache
into the shared prefix, so the loss and the gradients are those of the full batch; only the work shrinks.
`group_by="task"` keeps only the per-task groups (the grouping before ranking rows shared their prompts; a
comparison point for benchmarks/ranking_speed.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from promptray.platform.data.batching import Batch

MIN_PREFIX = 4  # shorter shared runs are not worth a second forward call
MAX_PACKED = 1024  # longest packed row: its dense (M, M) attention mask grows with the square
MAX_COST = 0.85  # split only when prefix + suffix work is at most this share of the full batch's
GroupBy = Literal["prompt", "task"]
GROUP_BY = ("prompt", "task")


@dataclass(frozen=True)
class PrefixGroup:
    """Rows of one task (`rows`, batch row indices, ascending) that share their first `length` tokens."""

    task: str
    rows: tuple[int, ...]
    length: int


@dataclass
class PrefixSplit:
    """The split layout of a batch (`split_shared_prefix`): K group prefixes of length P, then the B rows'
    remainders of length S that read the prefixes' KV cache. All tensors on the batch's device.

    `outer`: when the K prefixes are whole prompts of several records of a task (grouped by prompt), their
    own split: the task's start once, then each prompt's rest against it. The prefix cache is then
    (K, P' = outer P + outer S) and `cache_mask` / `attention_mask` cover those P' slots; else P' = P."""

    prefix_ids: torch.Tensor  # (K, P) long; one row per group with a shared prefix, right-padded
    prefix_virtual: torch.Tensor  # (K, P) long
    prefix_mask: torch.Tensor  # (K, P) long; 1 on each group's real prefix positions
    prefix_tasks: list[str]  # (K,) each group's task
    tasknames: list[str]  # (B,)
    row_group: torch.Tensor  # (B,) long; the prefix row whose cache each batch row reads
    cache_mask: torch.Tensor  # (B, P) long; 1 where a batch row sees the prefix cache
    input_ids: torch.Tensor  # (B, S) long; each row's remainder, right-padded
    virtual_ids: torch.Tensor  # (B, S) long
    loss_mask: torch.Tensor  # (B, S) bool
    attention_mask: torch.Tensor  # (B, P + S) long; cache slots then remainder
    position_ids: torch.Tensor  # (B, S) long; continuing each row's own positions
    outer: Optional[PrefixSplit] = None  # the K prefix rows' own split (their task's start once), or None


def _common_prefix(rows: torch.Tensor) -> int:
    """Length of the run of leading columns on which all rows (R, T) agree."""
    same = (rows == rows[:1]).all(dim=0)  # (T,)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else rows.shape[1]


def _first_targets(batch: Batch) -> list[int]:
    """(B,) per row: the column of its first target, its length when it has none."""
    lengths = batch.attention_mask.sum(-1).tolist()  # (B,)
    return [int(m.nonzero()[0]) if bool(m.any()) else int(n) for m, n in zip(batch.loss_mask, lengths)]


def _group_prefix(batch: Batch, rows: list[int], firsts: list[int]) -> int:
    """Shared prefix length of a group's rows: identical tokens, before the first target's predictor."""
    idx = torch.tensor(rows)
    lengths = batch.attention_mask[idx].sum(-1)  # (R,)
    limit = min(min(firsts[i] for i in rows) - 1, int(lengths.min()) - 1)  # hidden at t-1 predicts t
    common = min(_common_prefix(batch.input_ids[idx]), _common_prefix(batch.virtual_ids[idx]))
    return max(0, min(common, limit))


def _same_prompt(batch: Batch, rows: list[int], firsts: list[int]) -> list[list[int]]:
    """The sets of 2+ of `rows` that are identical (tokens and virtual rows) up to their first target."""
    by_prompt: dict[tuple, list[int]] = {}
    for i in rows:
        f = firsts[i]
        key = (f, *batch.input_ids[i, :f].tolist(), *batch.virtual_ids[i, :f].tolist())
        by_prompt.setdefault(key, []).append(i)
    return [g for g in by_prompt.values() if len(g) > 1]


def shared_prefixes(batch: Batch, *, group_by: GroupBy = "prompt") -> list[PrefixGroup]:
    """The batch's groups with a prefix worth sharing (2+ rows, at least MIN_PREFIX tokens), in the order of
    their first rows. `group_by` "prompt": rows identical up to their first target form their own group, the
    rest of each task its task's group; "task": one group per task. Needs right padding (training and
    scoring batches): a left-padded batch shares nothing. ValueError for an unknown `group_by`."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by {group_by!r}: use one of {GROUP_BY}")
    if len(batch) < 2 or bool((batch.attention_mask[:, 0] == 0).any()):
        return []
    firsts = _first_targets(batch)
    by_task: dict[str, list[int]] = {}
    for i, name in enumerate(batch.tasknames):
        by_task.setdefault(name, []).append(i)
    found: list[tuple[str, list[int]]] = []
    for name, rows in by_task.items():
        same = _same_prompt(batch, rows, firsts) if group_by == "prompt" else []
        taken = {i for g in same for i in g}
        rest = [i for i in rows if i not in taken]
        found += [(name, g) for g in same] + ([(name, rest)] if len(rest) > 1 else [])
    groups = [PrefixGroup(name, tuple(rows), _group_prefix(batch, rows, firsts)) for name, rows in found]
    return sorted((g for g in groups if g.length >= MIN_PREFIX), key=lambda g: g.rows[0])


def _row_prefix(groups: list[PrefixGroup], n_rows: int) -> torch.Tensor:
    """(B,) long: each row's shared prefix length (0 for a row in no group)."""
    row_p = torch.zeros(n_rows, dtype=torch.long)
    for g in groups:
        row_p[list(g.rows)] = g.length
    return row_p


def split_shared_prefix(batch: Batch, *, group_by: GroupBy = "prompt") -> Optional[PrefixSplit]:
    """The batch as shared prefixes (`shared_prefixes` with `group_by`) + right-padded remainders, or None
    when sharing would not save work. Rows in no group keep their full length."""
    B, T = batch.input_ids.shape
    groups = shared_prefixes(batch, group_by=group_by)
    if not groups:
        return None
    row_p = _row_prefix(groups, B)  # (B,)
    lengths = batch.attention_mask.sum(-1)  # (B,)
    P, S = max(g.length for g in groups), int((lengths - row_p).max())
    if len(groups) * P + B * S > MAX_COST * B * T:
        return None
    split = _build(batch, groups, row_p, P, S)
    return _nest(split) if group_by == "prompt" else split


def _nest(split: PrefixSplit) -> PrefixSplit:
    """`split` with its K prefix rows split by task (`outer`: each task's start once, then the rest of each
    prompt) when that saves work, e.g. the prompts of a ranking batch's records; the B rows then read the
    outer cache slots and the rests' slots of their prefix row."""
    K, P = split.prefix_ids.shape
    rows = Batch(list(split.prefix_tasks), split.prefix_ids, split.prefix_virtual,
                 torch.zeros(K, P, dtype=torch.bool), split.prefix_mask,
                 (split.prefix_mask.cumsum(-1) - 1).clamp(min=0))  # the prefixes as a batch with no targets
    outer = split_shared_prefix(rows, group_by="task")
    if outer is None:
        return split
    grouped = split.cache_mask[:, :1]  # (B, 1): 1 for a row that reads a prefix (every prefix is >= 1 long)
    cache_mask = outer.attention_mask[split.row_group] * grouped  # (B, P'): its prefix row's cache slots
    suffix_attn = split.attention_mask[:, P:]  # (B, S)
    return dataclasses.replace(split, outer=outer, cache_mask=cache_mask,
                               attention_mask=torch.cat([cache_mask, suffix_attn], dim=1))


def _build(batch: Batch, groups: list[PrefixGroup], row_p: torch.Tensor, P: int, S: int) -> PrefixSplit:
    first_row = [g.rows[0] for g in groups]
    prefix_mask = torch.zeros(len(groups), P, dtype=torch.long)  # (K, P)
    row_group = torch.zeros(len(batch), dtype=torch.long)  # (B,); rows in no group read no cache slot
    for k, g in enumerate(groups):
        prefix_mask[k, :g.length] = 1
        row_group[list(g.rows)] = k
    prefix_ids = batch.input_ids[first_row, :P] * prefix_mask  # (K, P); pad slots hold id 0, never seen
    prefix_virtual = torch.where(prefix_mask.bool(), batch.virtual_ids[first_row, :P], -1)  # (K, P)
    cache_mask = (torch.arange(P)[None, :] < row_p[:, None]).long()  # (B, P)
    cols = (row_p[:, None] + torch.arange(S)[None, :]).clamp(max=batch.input_ids.shape[1] - 1)  # (B, S)
    take = lambda t: t.gather(1, cols)  # noqa: E731  (B, T) -> (B, S)
    in_row = (row_p[:, None] + torch.arange(S)[None, :]) < batch.input_ids.shape[1]  # (B, S)
    suffix_attn = take(batch.attention_mask) * in_row  # (B, S)
    return PrefixSplit(
        prefix_ids=prefix_ids, prefix_virtual=prefix_virtual, prefix_mask=prefix_mask,
        prefix_tasks=[g.task for g in groups], tasknames=list(batch.tasknames), row_group=row_group,
        cache_mask=cache_mask, input_ids=take(batch.input_ids),
        virtual_ids=torch.where(suffix_attn.bool(), take(batch.virtual_ids), -1),
        loss_mask=take(batch.loss_mask) & suffix_attn.bool(),
        attention_mask=torch.cat([cache_mask, suffix_attn], dim=1),
        position_ids=take(batch.position_ids))


# ----------------------------------------------------------------------------- packed layout

@dataclass
class PackedBatch:
    """The packed layout of a batch (`pack_batch`): one row of M tokens (each group's prefix once, then each
    row's remainder) with a block-causal (M, M) attention mask; N targets."""

    input_ids: torch.Tensor  # (1, M) long: prefixes, then each row's remainder, no padding
    virtual_ids: torch.Tensor  # (1, M) long
    position_ids: torch.Tensor  # (1, M) long: each token's position in its own row
    tasknames: list[str]  # (M,) the task of each packed token
    allowed: torch.Tensor  # (M, M) bool: query m may attend key n
    targets: torch.Tensor  # (1, M) bool: the token's hidden state predicts a target
    labels: torch.Tensor  # (N,) long: those targets, in packed order


@dataclass(frozen=True)
class _Span:
    """Columns [start, end) of batch row `row`, packed as segment `seg` (-1 - k: group k's prefix; else the
    row), reading the prefix segment `home` (its own segment for a prefix or a row in no group)."""

    task: str
    row: int
    start: int
    end: int
    seg: int
    home: int


def pack_batch(batch: Batch, *, group_by: GroupBy = "prompt") -> Optional[PackedBatch]:
    """The batch as one packed row (each shared prefix of `shared_prefixes` once, no padding), or None when
    it has no shared prefix or would exceed MAX_PACKED tokens. Each row keeps only the tokens some target
    needs."""
    groups = shared_prefixes(batch, group_by=group_by)
    if not groups:
        return None
    lengths = batch.attention_mask.sum(-1).tolist()  # (B,)
    row_p, home = _row_prefix(groups, len(batch)).tolist(), list(range(len(batch)))
    spans = []
    for k, g in enumerate(groups):
        spans.append(_Span(g.task, g.rows[0], 0, g.length, -1 - k, -1 - k))
        home = [-1 - k if i in g.rows else h for i, h in enumerate(home)]
    for i, n in enumerate(batch.tasknames):
        end = max(row_p[i], min(_last_target(batch.loss_mask[i]), lengths[i]))  # empty when no targets
        spans.append(_Span(n, i, row_p[i], end, i, home[i]))
    if sum(s.end - s.start for s in spans) > MAX_PACKED:
        return None
    return _pack(batch, spans)


def _last_target(loss_mask: torch.Tensor) -> int:
    """Columns a row must run: through the one that predicts its last target (at least one column)."""
    cols = loss_mask[1:].nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def _pack(batch: Batch, spans: list[_Span]) -> PackedBatch:
    ids, virt, pos, tasks, seg, home, col, tgt, labels = [], [], [], [], [], [], [], [], []
    for s in spans:
        n, r = s.end - s.start, s.row
        ids += batch.input_ids[r, s.start:s.end].tolist()
        virt += batch.virtual_ids[r, s.start:s.end].tolist()
        pos += batch.position_ids[r, s.start:s.end].tolist()
        tasks += [s.task] * n
        seg += [s.seg] * n
        home += [s.home] * n
        col += list(range(s.start, s.end))
        is_tgt = batch.loss_mask[r, s.start + 1:s.end + 1].tolist() if s.seg >= 0 else [False] * n
        tgt += [bool(t) for t in is_tgt]
        labels += [t for t, m in zip(batch.input_ids[r, s.start + 1:s.end + 1].tolist(), is_tgt) if m]
    seg_t, home_t, col_t = torch.tensor(seg), torch.tensor(home), torch.tensor(col)  # (M,)
    same = seg_t[:, None] == seg_t[None, :]  # (M, M)
    reads_prefix = home_t[:, None] == seg_t[None, :]  # (M, M): a remainder token sees its group's prefix
    allowed = (same | reads_prefix) & (col_t[None, :] <= col_t[:, None])  # causal within each row
    t = lambda v: torch.tensor(v, dtype=torch.long)[None]  # noqa: E731  (1, M)
    return PackedBatch(t(ids), t(virt), t(pos), tasks, allowed, torch.tensor(tgt)[None], torch.tensor(labels))
