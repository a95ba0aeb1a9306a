"""Batched generation with a KV cache; one batch may mix any tasks and virtual-token counts.

Prompts are left-padded so every row's next token sits in the last column; padding is masked out and
position ids count only real positions, so a row's output does not depend on what it is batched with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from promptray.platform.batching import collate, to_device
from promptray.platform.dataset import Example
from promptray.platform.model import PromptLearningModel


@dataclass
class GenerationParams:
    tokens_to_generate: int = 30
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop_at_eos: bool = True
    extra_stop_ids: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        checks = [(self.tokens_to_generate >= 1, f"tokens_to_generate must be >= 1, got {self.tokens_to_generate}"),
                  (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
                  (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
                  (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
                  (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}")]
        return [msg for ok, msg in checks if not ok]


def process_logits(logits: torch.Tensor, seen: torch.Tensor, p: GenerationParams) -> torch.Tensor:
    """Repetition penalty (as in HF / CTRL), temperature, top-k and top-p on (B, V) float logits.

    `seen` (B, S) holds the ids already in each row; negative entries (placeholders, padding) are ignored."""
    if p.repetition_penalty != 1.0:
        valid = (seen >= 0).to(logits.dtype)  # (B, S)
        hit = torch.zeros_like(logits).scatter_add(1, seen.clamp(min=0), valid) > 0  # (B, V) seen tokens
        penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(hit, penalized, logits)
    if p.greedy or p.temperature == 0:
        return logits
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _choose(logits: torch.Tensor, p: GenerationParams, gen: Optional[torch.Generator]) -> torch.Tensor:
    if p.greedy or p.temperature == 0:
        return logits.argmax(-1)  # (B,)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # (B,)


Prefill = Callable[[PromptLearningModel, Sequence[Example], int], tuple]
"""(model, examples, pad_id) -> (logits of each row's last position (B, V), KV cache, attention mask (B, T),
position ids (B, T)): the prompt pass. `prefill_plain` runs the whole prompts; platform.prefix_cache reuses
each task's cached prompt start."""


def prefill_plain(model: PromptLearningModel, examples: Sequence[Example], pad_id: int) -> tuple:
    """The prompt pass over the whole left-padded prompts (see `Prefill`)."""
    batch = to_device(collate(examples, pad_id, side="left"), model.device)
    emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (B, T, H)
    logits, past = model.step(emb, batch.attention_mask, batch.position_ids)  # (B, V)
    return logits, past, batch.attention_mask, batch.position_ids


def seen_tokens(examples: Sequence[Example], pad_id: int) -> torch.Tensor:
    """(B, T) real prompt token ids for the repetition penalty; virtual placeholders and padding are -1."""
    batch = collate(examples, pad_id, side="left")
    return torch.where((batch.virtual_ids >= 0) | (batch.attention_mask == 0), -1, batch.input_ids)  # (B, T)


@torch.no_grad()
def generate(model: PromptLearningModel, examples: Sequence[Example], params: GenerationParams,
             pad_id: int, eos_id: int, prefill: Prefill = prefill_plain) -> list[list[int]]:
    """Generated token ids of each example (without the prompt; EOS and stop ids not included)."""
    model.eval()
    device = model.device
    gen = torch.Generator(device).manual_seed(params.seed) if params.seed is not None else None
    seen = seen_tokens(examples, pad_id).to(device)  # (B, T)
    stops = set(params.extra_stop_ids) | ({eos_id} if params.stop_at_eos else set())
    stop_ids = torch.tensor(sorted(stops) or [-1], device=device)
    done = torch.zeros(len(examples), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in examples]
    logits, past, mask, pos = prefill(model, examples, pad_id)  # (B, V), cache, (B, T), (B, T)
    for step in range(params.tokens_to_generate):
        nxt = _choose(process_logits(logits, seen, params), params, gen)  # (B,)
        done |= torch.isin(nxt, stop_ids)
        picked = nxt.tolist()  # one device-to-host copy per step
        for i in (~done).nonzero().flatten().tolist():
            out[i].append(picked[i])
        if bool(done.all()) or step == params.tokens_to_generate - 1:
            break  # nothing more to generate: skip the forward whose logits would go unused
        seen = torch.cat([seen, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)  # (B, T+1)
        pos = pos[:, -1:] + 1  # (B, 1)
        logits, past = model.step(model.token_embeddings(nxt[:, None]), mask, pos, past)
    return out
