"""Log-probabilities of tokens: of each generated token (with its top-k alternatives) and of a prompt's tokens.

Log-probabilities are those of the model's own next-token distribution (log-softmax of its logits in
float32), before repetition penalty, temperature, top-k or top-p: what the model thinks of a token, the
same whatever the sampling settings (vLLM's default, NeMo's `compute_logprob`).

`openai_logprobs` lays them out as OpenAI's legacy completions `logprobs` object:
`{"tokens": [str], "token_logprobs": [float|None], "top_logprobs": [{str: float}|None], "text_offset": [int]}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from promptray.platform.data.batching import collate, to_device
from promptray.platform.data.dataset import Example
from promptray.platform.model.prompt_model import PromptLearningModel

Decode = Callable[[list[int]], str]


@dataclass
class TokenLogprob:
    """One token's natural-log probability under the model, with the k most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the k most likely (id, logprob), best first


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Per row of (B, V) logits: the log-probability of `chosen` (B,) and the k most likely alternatives."""
    logp = logits.float().log_softmax(-1)  # (B, V)
    picked = logp.gather(1, chosen[:, None]).squeeze(1).tolist()  # (B,)
    top_v, top_i = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], chosen[:, None][:, :0])  # (B, k)
    return [TokenLogprob(int(t), lp, list(zip(ti, tv)))
            for t, lp, ti, tv in zip(chosen.tolist(), picked, top_i.tolist(), top_v.tolist())]


@torch.no_grad()
def prompt_logprobs(model: PromptLearningModel, example: Example, pad_id: int,
                    k: int) -> list[tuple[int, Optional[TokenLogprob]]]:
    """(position, log-probability) of each real (non-virtual) token of a prompt, given every position before
    it, virtual tokens included. Virtual tokens are not text and are not listed; a token at position 0 has
    nothing before it and gets None (OpenAI's `echo`: the first token's logprob is null)."""
    batch = to_device(collate([example], pad_id), model.device)
    with model.autocast():
        emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (1, T, H)
        logits = model.lm(inputs_embeds=emb, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids).logits[0, :-1]  # (T-1, V): predicts positions 1..T-1
    scored = token_logprobs(logits, batch.input_ids[0, 1:], k)  # (T-1)
    return [(t, None if t == 0 else scored[t - 1]) for t, v in enumerate(example.virtual_ids) if v < 0]


def text_offsets(ids: Sequence[int], decode: Decode) -> list[int]:
    """Where each token's text starts in `decode(ids)` (non-decreasing; a token that completes a multi-byte
    character shares the offset of the one that began it)."""
    full = decode(list(ids))
    out, last = [], 0
    for j in range(len(ids)):
        last = min(max(last, len(decode(list(ids[:j])).rstrip("\ufffd"))), len(full))
        out.append(last)
    return out


def openai_logprobs(entries: Sequence[Optional[TokenLogprob]], ids: Sequence[int], decode: Decode,
                    start: int = 0) -> dict:
    """OpenAI's legacy completions `logprobs` for tokens `ids` whose text, `decode(ids)`, starts at offset
    `start` of the returned text. `entries[j]` scores `ids[j]` (None: no logprob, e.g. a prompt's first
    token). `top_logprobs[j]` holds the k most likely tokens plus the chosen one (up to k+1, as OpenAI)."""
    full = decode(list(ids))
    offsets = text_offsets(ids, decode) + [len(full)]
    tokens = [full[offsets[j]:offsets[j + 1]] for j in range(len(ids))]
    tops = []
    for e in entries:
        if e is None:
            tops.append(None)
            continue
        top = {decode([t]): lp for t, lp in e.top}
        top.setdefault(decode([e.token_id]), e.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": [None if e is None else e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": [start + o for o in offsets[:-1]]}


def merge_logprobs(first: dict, second: dict) -> dict:
    """Two `openai_logprobs` objects of consecutive texts as one (the prompt's and the completion's)."""
    return {key: first[key] + second[key] for key in first}
