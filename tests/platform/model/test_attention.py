import pytest
import torch
import torch.nn.functional as F

from promptray.platform.model.attention import (
    DECODE_ATTENTION,
    MAX_QUERY,
    decode_attention_forward,
    grouped_attention,
    register_decode_attention,
)
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel


def _sdpa(query, key, value, mask):
    """Reference: SDPA with keys and values repeated per query head; (B, q, H, D) like attention functions."""
    g = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(query, key.repeat_interleave(g, 1), value.repeat_interleave(g, 1),
                                         attn_mask=mask)
    return out.transpose(1, 2)


def _inputs(dtype, q_len=1, B=3, H=6, KV=2, T=11, D=8):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, q_len, D, generator=g).to(dtype)
    k = torch.randn(B, KV, T, D, generator=g).to(dtype)
    v = torch.randn(B, KV, T, D, generator=g).to(dtype)
    mask = torch.ones(B, 1, q_len, T, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row
    mask[2, ..., 5:7] = False  # a hole (a shorter cached prefix)
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
def test_grouped_attention_equals_sdpa_in_float32(mask_kind):
    q, k, v, mask = _inputs(torch.float32)
    if mask_kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif mask_kind == "none":
        mask = None
    got = grouped_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    assert got.shape == (3, 1, 6, 8)
    torch.testing.assert_close(got, _sdpa(q, k, v, mask), atol=1e-6, rtol=1e-5)


def test_grouped_attention_in_bf16_is_transformers_eager_attention():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, k, v, mask = _inputs(torch.bfloat16, T=185)
    got = grouped_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    module = torch.nn.Module()
    module.num_key_value_groups = 3
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, torch.finfo(torch.bfloat16).min)
    eager, _ = eager_attention_forward(module, q, k, v, additive, scaling=q.shape[-1] ** -0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, eager, atol=0, rtol=0)
    exact = _sdpa(q.float(), k.float(), v.float(), mask)
    assert float((got.float() - exact).abs().max()) < 0.05  # bf16 scores and weights, as eager attention has


def test_the_fast_path_ignores_masked_slots():
    q, k, v, mask = _inputs(torch.float32)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :4], v2[0, :, :4] = 1e4, -1e4  # row 0's padding slots: any values
    scale = q.shape[-1] ** -0.5
    torch.testing.assert_close(grouped_attention(q, k2, v2, mask, scale),
                               grouped_attention(q, k, v, mask, scale))


@pytest.mark.parametrize("mask_kind", ["bool", "causal"])
def test_short_prompt_passes_are_eager_attention_too(mask_kind):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, k, v, mask = _inputs(torch.bfloat16, q_len=5, T=11)
    mask = mask & torch.ones(5, 11, dtype=torch.bool).tril(11 - 5)  # (B, 1, 5, 11): causal, padded, holed
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    got, _ = decode_attention_forward(module, q, k, v, None if mask_kind == "causal" else mask, scaling=0.125)
    if mask_kind == "causal":
        mask = torch.ones(1, 1, 5, 11, dtype=torch.bool).tril(11 - 5)
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, torch.finfo(torch.bfloat16).min)
    eager, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.125)
    torch.testing.assert_close(got, eager, atol=0, rtol=0)
    assert got.shape == (3, 5, 6, 8)


def test_long_queries_and_extras_go_to_sdpa_unchanged():
    q, k, v, mask = _inputs(torch.bfloat16, q_len=MAX_QUERY + 1, T=MAX_QUERY + 3)
    mask = mask & torch.ones(MAX_QUERY + 1, MAX_QUERY + 3, dtype=torch.bool).tril(2)
    module = torch.nn.Module()
    module.num_key_value_groups = 3
    got, _ = decode_attention_forward(module, q, k, v, mask, scaling=0.5)
    assert torch.equal(got, _sdpa_module(q, k, v, mask, 0.5))
    q1, k1, v1, m1 = _inputs(torch.float32)
    got, _ = decode_attention_forward(module, q1, k1, v1, m1, scaling=0.5, position_bias=torch.zeros(1, 6, 1, 11))
    assert torch.equal(got, _sdpa_module(q1, k1, v1, m1, 0.5, position_bias=torch.zeros(1, 6, 1, 11)))


def _sdpa_module(q, k, v, mask, scaling, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.num_key_value_groups = q.shape[1] // k.shape[1]
    return sdpa_attention_forward(module, q, k, v, mask, scaling=scaling, **kwargs)[0]


def test_a_bf16_model_decodes_with_it_on_the_cpu_and_matches_sdpa(tiny_llama):
    lm, tokenizer = tiny_llama
    model = PromptLearningModel(lm, PromptBank(32), precision="bf16")
    model.eval()
    assert lm.config._attn_implementation == DECODE_ATTENTION
    model.train()
    assert lm.config._attn_implementation == "eager"
    model.eval()
    ids = torch.tensor([[tokenizer.pad_token_id] * 3 + [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])  # (2, 7)
    mask = (torch.arange(7)[None] >= torch.tensor([[3], [0]])).long()  # (2, 7): row 0 left-padded
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([[20], [21]])  # (2, 1)
    logits = {}
    for kind in (DECODE_ATTENTION, "sdpa"):
        lm.set_attn_implementation(kind)
        with torch.no_grad():
            _, past = model.step(model.token_embeddings(ids), mask, pos)
            logits[kind], _ = model.step(model.token_embeddings(nxt), torch.cat([mask, torch.ones(2, 1)], 1).long(),
                                         pos[:, -1:] + 1, past)  # (2, V)
    torch.testing.assert_close(logits[DECODE_ATTENTION], logits["sdpa"], atol=2e-2, rtol=0)


def test_registering_twice_is_harmless():
    assert register_decode_attention() == register_decode_attention() == DECODE_ATTENTION
