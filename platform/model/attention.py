"""Attention for short queries of bf16 models on the CPU (decoding steps, short prompt passes) as two
matmuls over the key/value heads.

transformers' SDPA path sends bf16 attention on the CPU to PyTorch's CPU flash-attention kernel, which is slow
for short queries: per layer of smollm2-135m (14 rows, 9 query / 3 key-value heads, one query) it took 163 us
over 80 cache slots and 308 us over 185, where the same attention as two grouped matmuls took 85 and 138 us;
4 prompts of 30 tokens over 130 slots: 696 vs 383 us; without padding (no mask, so SDPA repeats keys per
head) a decoding step of 8 rows over 120 slots took 59 ms against 42 ms (2026-11-30, 1 thread;
`python -m benchmarks.decode_attention` records the step times). For 256 x 256 the flash kernel was faster
(2.0 vs 3.1 ms), hence `MAX_QUERY`.

`DECODE_ATTENTION` is registered with transformers' `AttentionInterface` (and SDPA's mask builder with
`AttentionMaskInterface`): a forward of at most `MAX_QUERY` query positions on the CPU, without dropout,
soft-capping, sinks or position bias, runs `grouped_attention`; everything else (long prompt passes,
training, GPUs) is transformers' own `sdpa_attention_forward`, unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["DECODE_ATTENTION", "MAX_QUERY", "decode_attention_forward", "grouped_attention",
           "register_decode_attention"]

DECODE_ATTENTION = "promptray_cpu_decode"
MAX_QUERY = 64  # longer queries (long prompt passes): SDPA's flash kernel was faster (256 x 256: 2.0 vs 3.1 ms)
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")  # attention extras only SDPA / eager handle


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: float, causal: bool = True) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v with the query heads grouped by the key/value head they share
    (grouped-query attention without repeating keys and values per query head).

    The arithmetic is transformers' eager attention (`eager_attention_forward`): products in the inputs' dtype,
    softmax in float32, weights cast back; a bf16 model on the CPU trains with eager attention
    (`PromptLearningModel.set_train_attention`), so it decodes with the numerics it was trained with.

    query (B, H, q, D); key and value (B, KV, T, D) with H a multiple of KV and T >= q; attention_mask None
    (then, with `causal`, query i sees keys up to T - q + i), bool (True: attend) or additive float,
    broadcastable to (B, 1, q, T). Returns (B, q, H, D) in query's dtype, the layout transformers' attention
    functions return."""
    B, H, Q, D = query.shape
    KV, T = key.shape[1], key.shape[2]
    G = H // KV
    q = query.reshape(B, KV, G * Q, D)  # (B, KV, G*q, D): head h = kv * G + g
    scores = (torch.matmul(q, key.transpose(-1, -2)) * scaling).view(B, KV, G, Q, T)  # (B, KV, G, q, T)
    if attention_mask is None and causal and Q > 1:
        attention_mask = torch.ones(Q, T, dtype=torch.bool, device=query.device).tril(T - Q)  # (q, T)
    if attention_mask is not None:
        mask = attention_mask.unsqueeze(2) if attention_mask.dim() == 4 else attention_mask  # (B, 1, 1, q, T)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(value.dtype).view(B, KV, G * Q, T)
    out = torch.matmul(weights, value).view(B, H, Q, D)  # (B, H, q, D)
    return out.transpose(1, 2).contiguous()  # (B, q, H, D)


def _takes_fast_path(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], dropout: float, kwargs: dict) -> bool:
    """A short query (at most MAX_QUERY positions) on the CPU, nothing grouped_attention does not do."""
    return (query.device.type == "cpu" and query.shape[2] <= MAX_QUERY and dropout == 0.0
            and query.shape[1] % key.shape[1] == 0 and key.shape[-1] == value.shape[-1]
            and (attention_mask is None or attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
            and not kwargs.get("output_attentions") and all(kwargs.get(k) is None for k in _UNSUPPORTED))


def decode_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                             scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function (the signature of `sdpa_attention_forward`): the grouped path for a
    short query on the CPU, SDPA otherwise. Returns ((B, q, H, D) outputs, None)."""
    if not _takes_fast_path(query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return grouped_attention(query, key, value, attention_mask, scale, causal), None


def register_decode_attention() -> str:
    """Make `DECODE_ATTENTION` a valid `attn_implementation` (idempotent: the same function each time); its
    name, for `model.set_attn_implementation`."""
    AttentionInterface.register(DECODE_ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION
