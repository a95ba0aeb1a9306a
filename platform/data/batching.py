"""Padding examples into batches, and length-grouped batch order to cut padding."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from promptray.platform.data.dataset import Example


@dataclass
class Batch:
    """Padded examples, all tensors (B, T) on one device (made on the CPU by `collate`); `tasknames` (B,)."""

    tasknames: list[str]
    input_ids: torch.Tensor  # (B, T) long; virtual and pad positions hold the pad id
    virtual_ids: torch.Tensor  # (B, T) long; row of the task's prompt, -1 for real tokens and padding
    loss_mask: torch.Tensor  # (B, T) bool; True where the token is a target
    attention_mask: torch.Tensor  # (B, T) long; 1 for real and virtual tokens, 0 for padding
    position_ids: torch.Tensor  # (B, T) long; 0.. over non-pad positions

    def __len__(self) -> int:
        return len(self.tasknames)

    @property
    def num_tokens(self) -> int:
        """Real and virtual tokens in the batch (padding left out): what tokens/s counts."""
        return int(self.attention_mask.sum())


def to_device(obj, device: Optional[torch.device]):
    """A dataclass of tensors (a batch, a prefix layout) with its tensors, and those of the dataclasses it
    holds, on `device`: itself when they are there already or `device` is None (the CPU, where batches are
    made); None stays None."""
    if obj is None or device is None:
        return obj
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) for k, v in vars(obj).items()
             if isinstance(v, torch.Tensor) or (dataclasses.is_dataclass(v) and not isinstance(v, type))}
    if all(v is getattr(obj, k) for k, v in moved.items()):
        return obj
    return dataclasses.replace(obj, **moved)


def collate(examples: Sequence[Example], pad_id: int, side: Literal["right", "left"] = "right") -> Batch:
    """Pad to the longest example. Training pads right; generation pads left so new tokens line up."""
    T = max(len(e) for e in examples)
    rows = {"input_ids": [], "virtual_ids": [], "loss_mask": [], "attention_mask": []}
    for e in examples:
        pad = T - len(e)
        values = {"input_ids": (e.input_ids, pad_id), "virtual_ids": (e.virtual_ids, -1),
                  "loss_mask": (e.loss_mask, 0), "attention_mask": ([1] * len(e), 0)}
        for k, (seq, fill) in values.items():
            rows[k].append(seq + [fill] * pad if side == "right" else [fill] * pad + seq)
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}
    position_ids = (t["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return Batch([e.taskname for e in examples], t["input_ids"], t["virtual_ids"], t["loss_mask"].bool(),
                 t["attention_mask"], position_ids)


def concat_batches(batches: Sequence[Batch], pad_id: int) -> Batch:
    """Right-padded batches as one, rows in order, padded to the longest: the batch `collate` makes of all
    their examples (a mixed-task batch when their tasks differ)."""
    T = max(b.input_ids.shape[1] for b in batches)
    fills = {"input_ids": pad_id, "virtual_ids": -1, "loss_mask": False, "attention_mask": 0}

    def padded(b: Batch, key: str) -> torch.Tensor:  # (B_i, T)
        t = getattr(b, key)
        return torch.cat([t, torch.full((t.shape[0], T - t.shape[1]), fills[key], dtype=t.dtype,
                                        device=t.device)], dim=1)

    t = {k: torch.cat([padded(b, k) for b in batches]) for k in fills}
    position_ids = (t["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, T), as collate's
    return Batch([n for b in batches for n in b.tasknames], t["input_ids"], t["virtual_ids"], t["loss_mask"],
                 t["attention_mask"], position_ids)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                           shuffle: bool = True, group_batches: int = 16) -> list[list[int]]:
    """Index batches for one epoch: shuffle, sort by length inside groups of `group_batches` batches,
    then shuffle the batch order. Cuts padding while keeping batches random (as HF's group_by_length)."""
    idx = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(idx)
    mega = batch_size * max(1, group_batches)
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        group = sorted(idx[start:start + mega], key=lambda i: -lengths[i])
        batches += [group[j:j + batch_size] for j in range(0, len(group), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                  group_by_length: bool = True) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, batch indices) stream; only full batches, so every step sees `batch_size` examples
    (the remainder of an epoch's shuffle is dropped, as in NeMo's samplers)."""
    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} examples cannot fill one batch of {batch_size}")
    epoch = 0
    while True:
        if group_by_length:
            batches = length_grouped_batches(lengths, batch_size, seed, epoch, shuffle)
        else:
            idx = list(range(len(lengths)))
            if shuffle:
                random.Random(seed * 100_003 + epoch).shuffle(idx)
            batches = [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
        for b in batches:
            if len(b) == batch_size:
                yield epoch, b
        epoch += 1
