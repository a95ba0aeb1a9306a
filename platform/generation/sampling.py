"""Generation parameters and the logit processing that turns a row's next-token logits into a choice.

Parameter names follow NeMo's inference section (`tokens_to_generate`, `min_tokens_to_generate`, `greedy`,
`top_k`, `top_p`, `temperature`, `repetition_penalty`); `stop` and `logprobs` follow the OpenAI API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

MAX_LOGPROBS = 20  # top-k alternatives per token at most (OpenAI's completions route allows 5)


@dataclass
class GenerationParams:
    """The decode core's per-row sampling parameters, under NeMo's names (tokens_to_generate, greedy,
    min_tokens_to_generate, ...); serving maps OpenAI's (max_tokens, min_tokens) onto them (serve/decoding.py).
    `problems()` lists invalid values as messages (nothing is raised here)."""

    tokens_to_generate: int = 30
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop_at_eos: bool = True
    extra_stop_ids: list[int] = field(default_factory=list)
    min_tokens_to_generate: int = 0  # EOS, stop ids and stop strings do not end a row before this many tokens
    stop: list[str] = field(default_factory=list)  # strings that end a row (cut from its text)
    logprobs: Optional[int] = None  # None: none; k >= 0: each token's log-probability and the k most likely

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: `greedy`, or temperature 0 (OpenAI's convention)."""
        return self.greedy or self.temperature == 0

    def problems(self) -> list[str]:
        """One message per out-of-range value ([] when all are valid)."""
        checks = [(self.tokens_to_generate >= 1, f"tokens_to_generate must be >= 1, got {self.tokens_to_generate}"),
                  (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
                  (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
                  (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
                  (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
                  (0 <= self.min_tokens_to_generate <= max(self.tokens_to_generate, 0),
                   f"min_tokens_to_generate must be in [0, tokens_to_generate={self.tokens_to_generate}], "
                   f"got {self.min_tokens_to_generate}"),
                  (self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                   f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")]
        return [msg for ok, msg in checks if not ok]

    def sampling_key(self) -> tuple:
        """Rows with equal keys share one pass of `process_logits`."""
        return (self.is_greedy, self.temperature, self.top_k, self.top_p, self.repetition_penalty)


def process_logits(logits: torch.Tensor, seen: torch.Tensor, p: GenerationParams) -> torch.Tensor:
    """Repetition penalty (as in HF / CTRL), temperature, top-k and top-p on (B, V) float logits.

    `seen` (B, S) holds the ids already in each row; negative entries (placeholders, padding) are ignored."""
    if p.repetition_penalty != 1.0:
        valid = (seen >= 0).to(logits.dtype)  # (B, S)
        hit = torch.zeros_like(logits).scatter_add(1, seen.clamp(min=0), valid) > 0  # (B, V) seen tokens
        penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(hit, penalized, logits)
    if p.is_greedy:
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


def choose_tokens(logits: torch.Tensor, seen: torch.Tensor, params: Sequence[GenerationParams],
                  generators: Sequence[Optional[torch.Generator]],
                  banned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) next token of each row from (B, V) logits, each row under its own parameters and generator.

    `banned` (B, V) bool (or None) marks tokens a row may not pick now (stop ids before
    `min_tokens_to_generate`).
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
