"""Row edits of a running batch's KV cache: join two batches, keep some rows, drop padding no row needs.

A batch's cache is a transformers `DynamicCache` whose layers hold keys and values (B, heads, T, d), with an
attention mask (B, T) over its slots (0: padding or a hole). Prompts are left-padded, so two batches join by
left-padding the shorter cache (masked slots) and concatenating rows; rows leave by index-selecting them,
and slots that no remaining row attends to are cut from the left. Masked slots take no part in attention and
position ids are each row's own, so these edits do not change any row's result.

Edited caches are made of `RoomyLayer`s: the used slots then free room, so that a decoding step writes its new
keys and values in place (transformers' `DynamicLayer` concatenates them to the whole cache, a copy of every
layer at every step whose size grows with the batch's padded width).

Only caches of plain growing `DynamicLayer`s (or `RoomyLayer`s) can be edited this way (not sliding windows,
linear attention or quantized caches): `editable_cache` says which (the prefix cache relies on the same check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["ROOM", "RoomyLayer", "editable_cache", "cache_layers", "make_cache", "pad_left", "join_caches",
           "select_cache", "leading_padding", "cut_left", "cache_slots", "with_room"]

ROOM = 16  # free slots a RoomyLayer keeps after its used ones: it is copied (grown) once per ROOM steps


class RoomyLayer(DynamicLayer):
    """A cache layer whose `keys` and `values` (B, heads, capacity, d) hold `used` slots, then free room.

    `update` writes new slots in place (growing the tensors, with ROOM slots to spare, only when they are
    full) and returns the whole tensors: attention runs over every slot, the free ones masked, because
    `get_mask_sizes` reports the capacity and transformers zero-pads the 2D attention mask to it (as for its
    `StaticLayer`). `get_seq_length` is `used`, so positions and the causal mask count real slots only."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, used: int):
        super().__init__()
        self.keys, self.values, self.used = keys, values, used
        self.device, self.is_initialized = keys.device, True

    def capacity(self, new: int) -> int:
        """Slots the tensors have after writing `new` more (the current ones when they fit)."""
        cap = self.keys.shape[-2]
        return cap if self.used + new <= cap else self.used + new + ROOM

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write (B, heads, t, d) new keys and values after the used slots; the whole (B, heads, capacity, d)."""
        t = key_states.shape[-2]
        cap = self.capacity(t)
        if cap != self.keys.shape[-2]:
            self.keys, self.values = (_roomy_copy(x[:, :, :self.used], cap) for x in (self.keys, self.values))
        self.keys[:, :, self.used:self.used + t] = key_states
        self.values[:, :, self.used:self.used + t] = value_states
        self.used += t
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv length, offset) of the mask: every slot of the tensors after this step's update."""
        return self.capacity(query_length), 0

    def get_seq_length(self) -> int:
        """Used slots."""
        return self.used

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` used slots (a negative count, as `DynamicLayer.crop` takes)."""
        self.used -= abs(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.keys, self.values = (x.repeat_interleave(repeats, dim=0) for x in (self.keys, self.values))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys, self.values = self.keys[indices], self.values[indices]


def _roomy_copy(x: torch.Tensor, cap: int) -> torch.Tensor:
    """(B, heads, T, d) -> (B, heads, cap, d): x then zeros."""
    out = x.new_zeros((*x.shape[:2], cap, x.shape[3]))
    out[:, :, :x.shape[2]] = x
    return out


def editable_cache(past) -> bool:
    """Whether a model's KV cache is a list of plain growing DynamicLayers or RoomyLayers (rows can be joined
    and selected)."""
    layers = getattr(past, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, RoomyLayer) for layer in layers)


def cache_layers(past) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of the used slots, each (B, heads, T, d) (views, no copy)."""
    return [(layer.keys[:, :, :layer.get_seq_length()], layer.values[:, :, :layer.get_seq_length()])
            for layer in past.layers]


def make_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], used: Optional[int] = None) -> DynamicCache:
    """A DynamicCache of `layers` (per layer (keys, values), each (B, heads, T, d)) without copying them:
    plain DynamicLayers, or RoomyLayers of `used` slots when `used` is given."""
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in layers])
    if used is not None:
        cache.layers = [RoomyLayer(k, v, used) for k, v in layers]
        return cache
    for layer, (k, v) in zip(cache.layers, layers):
        layer.keys, layer.values = k, v
    return cache


def with_room(past) -> DynamicCache:
    """The same cache as RoomyLayers (one copy of each layer with ROOM free slots); unchanged if not editable
    or already roomy."""
    if not editable_cache(past) or all(type(layer) is RoomyLayer for layer in past.layers):
        return past
    T = cache_slots(past)
    return make_cache([(_roomy_copy(k, T + ROOM), _roomy_copy(v, T + ROOM)) for k, v in cache_layers(past)], T)


def cache_slots(past) -> int:
    """T: the number of used slots of the cache (0 for an empty one)."""
    return int(past.layers[0].get_seq_length()) if past is not None and past.layers else 0


def pad_left(t: torch.Tensor, n: int, value: float = 0, dim: int = -1) -> torch.Tensor:
    """`t` with `n` slots of `value` added before its first entry along `dim`."""
    if n <= 0:
        return t
    dim = dim % t.dim()
    pads = [0, 0] * (t.dim() - 1 - dim) + [n, 0]  # F.pad counts dimensions from the last one
    return F.pad(t, pads, value=value)


def join_caches(a, b, ta: int, tb: int) -> DynamicCache:
    """Rows of cache `a` (T = ta) then those of `b` (T = tb), the shorter left-padded to max(ta, tb) slots;
    RoomyLayers with ROOM free slots."""
    T = max(ta, tb)
    layers = []
    for pair_a, pair_b in zip(cache_layers(a), cache_layers(b)):
        Ba = pair_a[0].shape[0]
        joined = []
        for xa, xb in zip(pair_a, pair_b):  # keys, then values: one copy each into zeros (masked slots)
            out = xa.new_zeros((Ba + xb.shape[0], *xa.shape[1:2], T + ROOM, xa.shape[3]))  # (Ba+Bb, heads, T+R, d)
            out[:Ba, :, T - ta:T] = xa
            out[Ba:, :, T - tb:T] = xb
            joined.append(out)
        layers.append((joined[0], joined[1]))
    return make_cache(layers, T)


def select_cache(past, rows: torch.Tensor, start: int = 0) -> DynamicCache:
    """The cache of `rows` (b,) only, from slot `start` on: RoomyLayers of T - start used slots (one copy of
    the selected rows with their room when start is 0)."""
    T = cache_slots(past) - start
    if start == 0 and all(type(layer) is RoomyLayer for layer in past.layers):
        return make_cache([(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                           for layer in past.layers], T)
    return make_cache([(_roomy_copy(k[rows, :, start:], T + ROOM), _roomy_copy(v[rows, :, start:], T + ROOM))
                       for k, v in cache_layers(past)], T)


def leading_padding(mask: torch.Tensor) -> int:
    """How many leading slots of a (B, T) attention mask no row attends to (what `cut_left` may drop)."""
    used = mask.bool().any(dim=0)  # (T,)
    if not bool(used.any()):
        return mask.shape[1]
    return int(used.long().argmax())


def cut_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T) -> (B, T - n): drop the first n columns."""
    return t[:, n:] if n > 0 else t
