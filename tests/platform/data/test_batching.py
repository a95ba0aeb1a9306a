"""Tests of padding examples into batches and of the (length-grouped) batch order."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from promptray.platform.data.batching import collate, concat_batches, epoch_batches, length_grouped_batches
from promptray.platform.data.dataset import Example

PAD = 7


def examples() -> list[Example]:
    # task "a": 2 virtual tokens then 3 real ones; task "b": 3 virtual tokens (split 2 + 1) around 1 real token
    a = Example("a", [PAD, PAD, 11, 12, 13], [0, 1, -1, -1, -1], [0, 0, 0, 1, 1])
    b = Example("b", [PAD, PAD, 21, PAD], [0, 1, -1, 2], [0, 0, 1, 0])
    c = Example("c", [PAD, 31], [0, -1], [0, 1])
    return [a, b, c]


def long(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def test_collate_right_padding():
    batch = collate(examples(), PAD)
    assert batch.tasknames == ["a", "b", "c"] and len(batch) == 3
    assert torch.equal(batch.input_ids, long([[PAD, PAD, 11, 12, 13], [PAD, PAD, 21, PAD, PAD],
                                              [PAD, 31, PAD, PAD, PAD]]))
    assert torch.equal(batch.virtual_ids, long([[0, 1, -1, -1, -1], [0, 1, -1, 2, -1], [0, -1, -1, -1, -1]]))
    assert batch.loss_mask.dtype == torch.bool
    assert torch.equal(batch.loss_mask, torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]).bool())
    assert torch.equal(batch.attention_mask, long([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]))
    assert batch.attention_mask.dtype == torch.long and batch.input_ids.dtype == torch.long
    assert torch.equal(batch.position_ids[0], long([0, 1, 2, 3, 4]))
    assert batch.position_ids[1, :4].tolist() == [0, 1, 2, 3]
    assert batch.position_ids[2, :2].tolist() == [0, 1]
    assert batch.num_tokens == 5 + 4 + 2


def test_concat_batches_is_the_collate_of_all_their_examples():
    a, b, c = examples()
    merged = concat_batches([collate([c], PAD), collate([a, b], PAD)], PAD)  # widths 2 and 5
    whole = collate([c, a, b], PAD)
    assert merged.tasknames == ["c", "a", "b"]
    for key in ("input_ids", "virtual_ids", "loss_mask", "attention_mask", "position_ids"):
        assert torch.equal(getattr(merged, key), getattr(whole, key)), key
    assert merged.loss_mask.dtype == torch.bool


def test_collate_left_padding():
    batch = collate(examples()[:2], PAD, side="left")
    assert batch.tasknames == ["a", "b"]
    assert torch.equal(batch.input_ids, long([[PAD, PAD, 11, 12, 13], [PAD, PAD, PAD, 21, PAD]]))
    assert torch.equal(batch.virtual_ids, long([[0, 1, -1, -1, -1], [-1, 0, 1, -1, 2]]))
    assert torch.equal(batch.loss_mask, torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]]).bool())
    assert torch.equal(batch.attention_mask, long([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]))
    assert torch.equal(batch.position_ids, long([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]))
    three = collate(examples(), PAD, side="left")
    assert torch.equal(three.attention_mask[2], long([0, 0, 0, 1, 1]))
    assert torch.equal(three.position_ids[2, 3:], long([0, 1]))
    assert torch.equal(three.input_ids[2], long([PAD, PAD, PAD, PAD, 31]))
    assert torch.equal(three.virtual_ids[2], long([-1, -1, -1, 0, -1]))


def test_collate_equal_lengths_needs_no_padding():
    a = examples()[0]
    for side in ("right", "left"):
        batch = collate([a, a], PAD, side=side)
        assert batch.input_ids.shape == (2, 5) and int(batch.attention_mask.sum()) == 10
        assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4]] * 2


def padded_tokens(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_every_index_once():
    lengths = [random.Random(1).randint(1, 100) for _ in range(103)]
    for epoch in range(3):
        batches = length_grouped_batches(lengths, 8, seed=3, epoch=epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(103))
        assert sorted(len(b) for b in batches) == [7] + [8] * 12


def test_length_grouped_batches_deterministic_and_vary_by_epoch_and_seed():
    lengths = list(range(1, 65))
    a = length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert a == length_grouped_batches(lengths, 4, seed=0, epoch=0)
    assert a != length_grouped_batches(lengths, 4, seed=0, epoch=1)
    assert a != length_grouped_batches(lengths, 4, seed=1, epoch=0)
    epochs = [length_grouped_batches(lengths, 4, seed=0, epoch=e) for e in range(5)]
    assert len({str(e) for e in epochs}) == 5


def test_length_grouped_batches_pad_less_than_random():
    rng = random.Random(0)
    lengths = [rng.choice([5, 6, 8, 200, 400]) if rng.random() < 0.3 else rng.randint(4, 12) for _ in range(512)]
    for epoch in range(3):
        grouped = length_grouped_batches(lengths, 8, seed=0, epoch=epoch)
        idx = list(range(len(lengths)))
        random.Random(epoch).shuffle(idx)
        plain = [idx[j:j + 8] for j in range(0, len(idx), 8)]
        assert padded_tokens(grouped, lengths) * 3 < padded_tokens(plain, lengths)
    # within a group of batches the lengths are sorted (longest first) before cutting into batches
    for b in grouped:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_length_grouped_without_shuffle_is_sorted_within_groups():
    lengths = [3, 9, 1, 7, 5, 2]
    assert length_grouped_batches(lengths, 2, seed=0, epoch=0, shuffle=False, group_batches=1) == [
        [1, 0], [3, 2], [4, 5]]
    assert length_grouped_batches(lengths, 2, seed=0, epoch=5, shuffle=False, group_batches=16) == [
        [1, 3], [4, 0], [5, 2]]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_only_full_batches(group_by_length):
    lengths = [random.Random(2).randint(1, 50) for _ in range(23)]
    stream = epoch_batches(lengths, 5, seed=4, group_by_length=group_by_length)
    taken = list(itertools.islice(stream, 4 * 4))  # 23 // 5 = 4 full batches per epoch
    assert [e for e, _ in taken] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    per_epoch = {}
    for epoch, b in taken:
        assert len(b) == 5
        per_epoch.setdefault(epoch, []).extend(b)
    for idx in per_epoch.values():
        assert len(idx) == len(set(idx)) == 20 and set(idx) <= set(range(23))
    assert per_epoch[0] != per_epoch[1]
    again = list(itertools.islice(epoch_batches(lengths, 5, seed=4, group_by_length=group_by_length), 16))
    assert again == taken


def test_epoch_batches_without_shuffle_is_in_order():
    stream = epoch_batches([1] * 7, 3, seed=0, shuffle=False, group_by_length=False)
    assert list(itertools.islice(stream, 4)) == [(0, [0, 1, 2]), (0, [3, 4, 5]), (1, [0, 1, 2]), (1, [3, 4, 5])]


def test_epoch_batches_exact_fit_and_too_few_examples():
    stream = epoch_batches([4, 4, 4], 3, seed=0)
    assert [sorted(b) for _, b in itertools.islice(stream, 2)] == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="2 examples cannot fill one batch of 3"):
        next(epoch_batches([1, 2], 3, seed=0))
