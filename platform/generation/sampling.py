"""Logit processing that turns a row's next-token logits into a choice, under its `GenerationParams`
(platform/generation/params.py): transformers' logits processors applied per group of rows with equal
parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from promptray.platform.generation.params import MAX_LOGPROBS, RANGES, GenerationParams

__all__ = ["MAX_LOGPROBS", "RANGES", "GenerationParams", "process_logits", "choose_tokens"]


def process_logits(logits: torch.Tensor, seen: torch.Tensor, p: GenerationParams) -> torch.Tensor:
    """Repetition penalty (CTRL's, as in Hugging Face), temperature, top-k and top-p on (B, V) float logits,
    with transformers' logits processors (one parameter set for all B rows: `choose_tokens` groups rows).

    `seen` (B, S) holds the ids already in each row; negative entries (placeholders, padding) are ignored."""
    vocab = logits.shape[-1]
    if p.repetition_penalty != 1.0:
        # ids >= V are dropped by the processor (it pads the logits by one column): our negatives go there
        ids = seen.masked_fill(seen < 0, vocab)  # (B, S)
        logits = RepetitionPenaltyLogitsProcessor(float(p.repetition_penalty))(ids, logits)
    if p.is_greedy:
        return logits
    warpers: list = [TemperatureLogitsWarper(float(p.temperature))]
    if p.top_k > 0:
        warpers.append(TopKLogitsWarper(int(p.top_k)))
    if p.top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(p.top_p)))
    for warp in warpers:
        logits = warp(seen, logits)
    return logits


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, params: Sequence[GenerationParams],
                  generators: Sequence[Optional[torch.Generator]],
                  banned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) next token of each row from (B, V) logits, each row under its own parameters and generator.

    `banned` (B, V) bool (or None) marks tokens a row may not pick now (stop ids before
    `min_new_tokens`).
    The logits are processed once per group of rows with equal parameters; sampling draws from each row's
    own generator (None: torch's global one), so a row with its own seeded generator does not depend on its
    batch; rows that share one generator (an offline batch's seed) draw together, in one call."""
    nxt = torch.zeros(len(params), dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p.sampling_key(), []).append(i)
    for idx in groups.values():
        p = params[idx[0]]
        scores = process_logits(logits[idx], seen[idx], p)  # (b, V)
        if banned is not None:
            scores = scores.masked_fill(banned[idx], float("-inf"))
        if p.is_greedy:
            nxt[idx] = scores.argmax(-1)
            continue
        probs = scores.softmax(-1)  # (b, V)
        shared = {id(generators[i]) for i in idx}
        if len(shared) == 1:  # one generator for the group (offline batches): one draw for all its rows
            nxt[idx] = torch.multinomial(probs, 1, generator=generators[idx[0]]).squeeze(-1)
            continue
        for j, i in enumerate(idx):
            nxt[i] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    return nxt
