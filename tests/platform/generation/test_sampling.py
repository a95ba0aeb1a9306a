"""transformers' logits processors in `process_logits` give what the rules they implement say (CTRL's repetition
penalty, temperature, top-k, nucleus top-p), written out here on random logits; and the shared ranges."""

import torch

from promptray.platform.generation.params import RANGES, GenerationParams
from promptray.platform.generation.sampling import process_logits


def _reference(logits, seen, p):
    """The rules by hand: seen tokens' logits divided (positive) or multiplied (negative) by the penalty;
    then / temperature; top-k keeps the k largest; top-p keeps the smallest most-likely set reaching p."""
    hit = torch.zeros_like(logits, dtype=torch.bool)
    for b, row in enumerate(seen.tolist()):
        hit[b, [t for t in row if t >= 0]] = True
    logits = torch.where(hit, torch.where(logits > 0, logits / p.repetition_penalty,
                                          logits * p.repetition_penalty), logits)
    if p.is_greedy:
        return logits
    logits = logits / p.temperature
    if p.top_k:
        k = min(p.top_k, logits.shape[-1])  # more than the vocabulary: all kept
        kth = logits.sort(-1, descending=True).values[:, k - 1:k]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1:
        srt, order = logits.sort(-1, descending=True)  # (B, V)
        before = srt.softmax(-1).cumsum(-1) - srt.softmax(-1)  # mass of the more likely tokens
        logits = logits.masked_fill((before >= p.top_p).scatter(1, order, before >= p.top_p), float("-inf"))
    return logits


def _random(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 50, generator=g) * 3  # (B, V)
    seen = torch.randint(-1, 50, (6, 9), generator=g)  # (B, S), -1: placeholders
    seen[5] = -1  # a row with nothing seen yet
    return logits, seen


def test_greedy_penalty_is_exact():
    for seed in range(5):
        logits, seen = _random(seed)
        for penalty in (1.0, 1.3, 0.7):
            p = GenerationParams(repetition_penalty=penalty)
            assert torch.equal(process_logits(logits, seen, p), _reference(logits, seen, p))


def test_sampling_warpers_match_the_rules():
    for seed in range(5):
        logits, seen = _random(seed)
        for kw in ({"temperature": 0.7}, {"top_k": 5}, {"top_k": 60}, {"top_p": 0.8, "temperature": 1.5},
                   {"top_k": 10, "top_p": 0.5, "repetition_penalty": 1.2}, {"top_p": 0.05}):
            p = GenerationParams(greedy=False, **kw)
            out, ref = process_logits(logits, seen, p), _reference(logits, seen, p)
            kept = torch.isfinite(ref)
            assert torch.equal(torch.isfinite(out), kept), kw  # the same kept set
            assert torch.allclose(out[kept], ref[kept]), kw
            if set(kw) == {"top_k"} and kw["top_k"] < 50:
                assert (kept.sum(-1) == kw["top_k"]).all()  # no ties in random logits


def test_ranges_are_the_front_ends_bounds():
    assert RANGES["top_p"].bounds() == {"gt": 0, "le": 1}
    assert RANGES["max_new_tokens"].bounds(le=4096) == {"ge": 1, "le": 4096}
    assert RANGES["logprobs"].bounds(le=5) == {"ge": 0, "le": 5}
    assert RANGES["temperature"].problem("temperature", 101.0) == "temperature must be in [0, 100], got 101.0"
    assert GenerationParams(min_new_tokens=31).problems() == ["min_new_tokens must be in [0, max_new_tokens=30], "
                                                               "got 31"]
