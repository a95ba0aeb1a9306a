"""Row edits of a running batch's KV cache, and RoomyLayer: steps write in place and decode exactly as
transformers' concatenating DynamicLayer does."""

from __future__ import annotations

import torch

from promptray.platform.generation.kv_rows import (
    ROOM,
    RoomyLayer,
    cache_layers,
    cache_slots,
    editable_cache,
    join_caches,
    make_cache,
    select_cache,
    with_room,
)
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel


def _decode(model, ids, mask, steps: int, roomy: bool):
    """Greedy steps after a prompt pass; (logits per step (steps, B, V), the final cache, steps that wrote the
    cache in place)."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    with torch.no_grad():
        logits, past = model.step(model.token_embeddings(ids), mask, pos)
        past = with_room(past) if roomy else past
        out, in_place = [], 0
        for _ in range(steps):
            nxt = logits.argmax(-1)  # (B,)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            pos = pos[:, -1:] + 1
            before = (past.layers[0].keys.data_ptr(), past.layers[0].keys.shape[-2])
            logits, past = model.step(model.token_embeddings(nxt[:, None]), mask, pos, past)
            in_place += (past.layers[0].keys.data_ptr(), past.layers[0].keys.shape[-2]) == before
            out.append(logits)
    return torch.stack(out), past, in_place


def test_a_roomy_cache_decodes_exactly_like_a_dynamic_one(tiny_llama):
    lm, tok = tiny_llama
    model = PromptLearningModel(lm, PromptBank(32))  # fp32
    ids = torch.tensor([[tok.pad_token_id] * 3 + [5, 6, 7], [8, 9, 10, 11, 12, 13]])  # (2, 6), row 0 padded
    mask = (ids != tok.pad_token_id).long()
    steps = 2 * ROOM + 3  # the roomy cache grows twice
    plain, plain_past, _ = _decode(model, ids, mask, steps, roomy=False)
    roomy, roomy_past, in_place = _decode(model, ids, mask, steps, roomy=True)
    assert in_place == steps - 2  # every step but the two that grew the tensors
    torch.testing.assert_close(roomy, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(roomy.argmax(-1), plain.argmax(-1))
    assert all(type(layer) is RoomyLayer for layer in roomy_past.layers)
    assert cache_slots(roomy_past) == cache_slots(plain_past) == 6 + steps
    for (k, v), (pk, pv) in zip(cache_layers(roomy_past), cache_layers(plain_past)):
        torch.testing.assert_close(k, pk, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, pv, atol=1e-5, rtol=1e-5)


def _cache(B: int, T: int, start: float):
    """A roomy cache of 2 layers whose slot t of row b holds start + 10 b + t (keys) and its negative (values)."""
    val = start + 10 * torch.arange(B)[:, None, None, None] + torch.arange(T)[None, None, :, None]  # (B, 1, T, 1)
    k = val.expand(B, 2, T, 4).float()
    return with_room(make_cache([(k.clone(), -k.clone()), (k.clone(), -k.clone())]))


def test_join_left_pads_the_shorter_cache_and_keeps_room():
    a, b = _cache(2, 3, 0.0), _cache(1, 5, 100.0)
    joined = join_caches(a, b, 3, 5)
    assert editable_cache(joined) and cache_slots(joined) == 5
    assert joined.layers[0].keys.shape == (3, 2, 5 + ROOM, 4)
    keys = cache_layers(joined)[1][0][:, 0, :, 0]  # (3, 5)
    assert keys.tolist() == [[0, 0, 0, 1, 2], [0, 0, 10, 11, 12], [100, 101, 102, 103, 104]]


def test_select_keeps_rows_and_cuts_unused_leading_slots():
    past = _cache(3, 4, 0.0)
    kept = select_cache(past, torch.tensor([2, 0]), start=1)
    assert cache_slots(kept) == 3
    assert cache_layers(kept)[0][0][:, 0, :, 0].tolist() == [[21, 22, 23], [1, 2, 3]]
    assert cache_layers(kept)[0][1][:, 0, :, 0].tolist() == [[-21, -22, -23], [-1, -2, -3]]
    same = select_cache(past, torch.tensor([1]))  # start 0: the rows with their room
    assert cache_layers(same)[1][0][:, 0, :, 0].tolist() == [[10, 11, 12, 13]]
    assert same.layers[0].keys.shape[-2] == past.layers[0].keys.shape[-2]


def test_mask_sizes_cover_the_room_after_the_update():
    layer = _cache(1, 4, 0.0).layers[0]
    cap = layer.keys.shape[-2]
    assert layer.get_seq_length() == 4 and layer.get_mask_sizes(1) == (cap, 0)
    assert layer.get_mask_sizes(cap - 4 + 1) == (cap + 1 + ROOM, 0)  # one more than fits: grown
