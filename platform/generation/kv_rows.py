"""Row edits of a running batch's KV cache: join two batches, keep some rows, drop padding no row needs.

A batch's cache is a transformers `DynamicCache` whose layers hold keys and values (B, heads, T, d), with an
attention mask (B, T) over its slots (0: padding or a hole). Prompts are left-padded, so two batches join by
left-padding the shorter cache (masked slots) and concatenating rows; rows leave by index-selecting them,
and slots that no remaining row attends to are cut from the left. Masked slots take no part in attention and
position ids are each row's own, so these edits do not change any row's result.

Only caches of plain growing `DynamicLayer`s can be edited this way (not sliding windows, linear attention
or quantized caches): `editable_cache` says which (the prefix cache relies on the same check).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["editable_cache", "cache_layers", "make_cache", "pad_left", "join_caches", "select_cache",
           "leading_padding", "cut_left", "cache_slots"]


def editable_cache(past) -> bool:
    """Whether a model's KV cache is a list of plain growing DynamicLayers (rows can be joined and selected)."""
    layers = getattr(past, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def cache_layers(past) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (B, heads, T, d)."""
    return [(layer.keys, layer.values) for layer in past.layers]


def make_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache holding `layers` (per layer (keys, values), each (B, heads, T, d)) without copying them
    (built from empty slices, then given the tensors, as `DynamicLayer.reorder_cache` assigns them)."""
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in layers])
    for layer, (k, v) in zip(cache.layers, layers):
        layer.keys, layer.values = k, v
    return cache


def cache_slots(past) -> int:
    """T: the number of slots of the cache (0 for an empty one)."""
    return int(past.layers[0].keys.shape[-2]) if past is not None and past.layers else 0


def pad_left(t: torch.Tensor, n: int, value: float = 0, dim: int = -1) -> torch.Tensor:
    """`t` with `n` slots of `value` added before its first entry along `dim`."""
    if n <= 0:
        return t
    dim = dim % t.dim()
    pads = [0, 0] * (t.dim() - 1 - dim) + [n, 0]  # F.pad counts dimensions from the last one
    return F.pad(t, pads, value=value)


def join_caches(a, b, ta: int, tb: int) -> DynamicCache:
    """Rows of cache `a` (T = ta) then those of `b` (T = tb), the shorter left-padded to max(ta, tb) slots."""
    T = max(ta, tb)
    layers = []
    for pair_a, pair_b in zip(cache_layers(a), cache_layers(b)):
        Ba = pair_a[0].shape[0]
        joined = []
        for xa, xb in zip(pair_a, pair_b):  # keys, then values: one copy each into zeros (masked slots)
            out = xa.new_zeros((Ba + xb.shape[0], *xa.shape[1:2], T, xa.shape[3]))  # (Ba+Bb, heads, T, d)
            out[:Ba, :, T - ta:] = xa
            out[Ba:, :, T - tb:] = xb
            joined.append(out)
        layers.append((joined[0], joined[1]))
    return make_cache(layers)


def select_cache(past, rows: torch.Tensor, start: int = 0) -> DynamicCache:
    """The cache of `rows` (b,) only, from slot `start` on: (b, heads, T - start, d) per layer."""
    return make_cache([(k[rows, :, start:], v[rows, :, start:]) for k, v in cache_layers(past)])


def leading_padding(mask: torch.Tensor) -> int:
    """How many leading slots of a (B, T) attention mask no row attends to (what `cut_left` may drop)."""
    used = mask.bool().any(dim=0)  # (T,)
    if not bool(used.any()):
        return mask.shape[1]
    return int(used.long().argmax())


def cut_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T) -> (B, T - n): drop the first n columns."""
    return t[:, n:] if n > 0 else t
