"""Tests of batched KV-cache generation and logit processing."""

from __future__ import annotations

import math

import pytest
import torch

from promptray.platform.data.batching import collate
from promptray.platform.data.dataset import Example
from promptray.platform.generation.decode import (
    DecodeRow,
    GenerationParams,
    decode_rows,
    decode_steps,
    generate,
    process_logits,
)
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import MODELS, generation_setup


def reference_greedy(model: PromptLearningModel, example: Example, n: int, pad_id: int) -> list[int]:
    """No KV cache: the full forward over the whole sequence at every step."""
    batch = collate([example], pad_id, side="left")
    with torch.no_grad():
        emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (1, T, H)
        out = []
        for _ in range(n):
            logits = model.lm(inputs_embeds=emb, use_cache=False).logits[0, -1]  # (V,)
            top2 = logits.topk(2).values
            assert float(top2[0] - top2[1]) > 1e-4  # no near-ties that rounding could flip
            tok = int(logits.argmax())
            out.append(tok)
            emb = torch.cat([emb, model.token_embeddings(torch.tensor([[tok]]))], dim=1)
    return out


def truncate_at(tokens: list[int], stop: int) -> list[int]:
    return tokens[:tokens.index(stop)] if stop in tokens else tokens


# ----------------------------------------------------------------------------- greedy decoding

@pytest.mark.parametrize("fixture", MODELS)
def test_batched_greedy_equals_alone_and_no_cache_reference(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    params = GenerationParams(max_new_tokens=6, stop_at_eos=False)
    batched = generate(model, exs, params, pad, eos)
    alone = [generate(model, [e], params, pad, eos)[0] for e in exs]
    reference = [reference_greedy(model, e, 6, pad) for e in exs]
    assert all(len(o) == 6 for o in batched)
    assert batched == alone
    assert batched == reference
    assert len({tuple(o) for o in batched}) > 1  # prompts matter: outputs are not all the same

    # a different batch order and subset gives the same per-example outputs
    order = [3, 0, 4]
    assert generate(model, [exs[i] for i in order], params, pad, eos) == [batched[i] for i in order]


@pytest.mark.parametrize("fixture", MODELS)
def test_tokens_to_generate_is_respected(fixture, request, monkeypatch):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    real_step, calls = model.step, []

    def step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(model, "step", step)
    long = generate(model, exs[:2], GenerationParams(max_new_tokens=5, stop_at_eos=False), pad, eos)
    assert [len(o) for o in long] == [5, 5]
    assert len(calls) == 5  # the prompt, then one step per new token but the last
    for n in (1, 3):
        calls.clear()
        out = generate(model, exs[:2], GenerationParams(max_new_tokens=n, stop_at_eos=False), pad, eos)
        assert out == [o[:n] for o in long]
        assert len(calls) == n


@pytest.mark.parametrize("fixture", MODELS)
def test_stop_ids_end_each_row_separately(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    full = generate(model, exs, GenerationParams(max_new_tokens=6, stop_at_eos=False), pad, eos)
    assert all(eos not in o for o in full)

    first = full[0][0]
    out = generate(model, exs, GenerationParams(max_new_tokens=6, extra_stop_ids=[first]), pad, eos)
    assert out[0] == []
    assert out == [truncate_at(o, first) for o in full]

    stop = full[1][2]
    out = generate(model, exs, GenerationParams(max_new_tokens=6, extra_stop_ids=[stop]), pad, eos)
    assert out == [truncate_at(o, stop) for o in full]
    assert len(out[1]) <= 2

    # passing the first token as the EOS id stops there (and only when stop_at_eos is on)
    assert generate(model, exs[:1], GenerationParams(max_new_tokens=6), pad, first) == [[]]
    assert generate(model, exs[:1], GenerationParams(max_new_tokens=6, stop_at_eos=False), pad,
                    first) == [full[0]]


@pytest.mark.parametrize("fixture", MODELS)
def test_stop_at_real_eos(fixture, request, monkeypatch):
    """Row 0 is forced to emit EOS as its third token; it stops there, the other rows run on unchanged."""
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    full = generate(model, exs, GenerationParams(max_new_tokens=6, stop_at_eos=False), pad, eos)

    real_step, calls = model.step, []

    def step(*args, **kwargs):
        logits, past = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            logits = logits.clone()
            logits[0, eos] = logits[0].max() + 100.0
        return logits, past

    monkeypatch.setattr(model, "step", step)
    out = generate(model, exs, GenerationParams(max_new_tokens=6), pad, eos)
    assert out[0] == full[0][:2]
    assert out[1:] == full[1:]

    calls.clear()
    out = generate(model, exs, GenerationParams(max_new_tokens=6, stop_at_eos=False), pad, eos)
    assert out[0][:3] == full[0][:2] + [eos] and len(out[0]) == 6
    assert out[1:] == full[1:]

    # when every row has stopped, decoding ends: no further model steps
    calls.clear()
    out = generate(model, exs[:1], GenerationParams(max_new_tokens=6), pad, eos)
    assert out == [full[0][:2]] and len(calls) == 3


@pytest.mark.parametrize("fixture", MODELS)
def test_bf16_generation_runs(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    params = GenerationParams(max_new_tokens=4, stop_at_eos=False)
    fp32 = generate(model, exs, params, pad, eos)
    bf16_model = PromptLearningModel(lm, model.bank, precision="bf16")
    assert bf16_model.compute_dtype == torch.bfloat16
    out = generate(bf16_model, exs, params, pad, eos)
    assert [len(o) for o in out] == [4] * len(exs)
    assert all(0 <= t < len(tokenizer) for o in out for t in o)
    # rounding may flip near-ties of these random models, but most first tokens agree with fp32
    assert sum(o[0] == f[0] for o, f in zip(out, fp32)) >= len(exs) - 1


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("fixture", MODELS)
def test_sampling_is_reproducible_with_a_seed(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def sample(seed, **kw):
        params = GenerationParams(max_new_tokens=5, greedy=False, seed=seed, stop_at_eos=False, **kw)
        return generate(model, exs[:3], params, pad, eos)

    first = sample(1)
    assert first == sample(1)
    assert all(len(o) == 5 for o in first)
    assert any(sample(s) != first for s in (2, 3, 4))
    top1 = sample(5, top_k=1)  # top_k=1 sampling is greedy
    greedy = generate(model, exs[:3], GenerationParams(max_new_tokens=5, stop_at_eos=False), pad, eos)
    assert top1 == greedy
    assert sample(6, temperature=0.0) == greedy
    assert sample(7, top_k=20, top_p=0.9, temperature=0.7) == sample(7, top_k=20, top_p=0.9, temperature=0.7)


# ----------------------------------------------------------------------------- logit processing

def _sampling(**kw) -> GenerationParams:
    return GenerationParams(greedy=False, **kw)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.3, 2.0, -1.0, 5.0, 1.5, 0.0, -3.0, 4.0],
                           [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    seen = torch.zeros(2, 0, dtype=torch.long)
    out = process_logits(logits, seen, _sampling(top_k=3))
    assert torch.isfinite(out).sum(-1).tolist() == [3, 3]
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 3, 7]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [0, 1, 2]
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept])  # kept logits unchanged
    assert torch.equal(process_logits(logits, seen, _sampling(top_k=0)), logits)
    assert torch.isfinite(process_logits(logits, seen, _sampling(top_k=100))).all()


def test_top_p_keeps_smallest_set_reaching_p():
    # probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625, in shuffled order
    probs = torch.tensor([[0.125, 0.5, 0.0625, 0.25, 0.0625]])
    logits = probs.log()
    seen = torch.zeros(1, 0, dtype=torch.long)
    expected = {0.3: [1], 0.6: [1, 3], 0.7: [1, 3], 0.8: [0, 1, 3], 0.95: [0, 1, 2, 3, 4], 1.0: [0, 1, 2, 3, 4]}
    for p, kept in expected.items():
        out = process_logits(logits, seen, _sampling(top_p=p))
        assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept, p
        assert torch.allclose(out[0, kept], logits[0, kept])
    # top-k first, then top-p over the renormalised rest: 0.5/0.75 = 0.667 alone does not reach 0.7
    out = process_logits(logits, seen, _sampling(top_k=2, top_p=0.7))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 3]
    out = process_logits(logits, seen, _sampling(top_k=2, top_p=0.6))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1]


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    seen = torch.zeros(1, 0, dtype=torch.long)
    assert torch.equal(process_logits(logits, seen, _sampling(temperature=2.0)), logits / 2.0)
    assert torch.equal(process_logits(logits, seen, _sampling(temperature=0.5)), logits / 0.5)
    # greedy ignores temperature (it cannot change the argmax)
    assert torch.equal(process_logits(logits, seen, GenerationParams(temperature=2.0)), logits)


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5, -4.0],
                           [2.0, -1.0, 3.0, 0.5, -4.0]])
    seen = torch.tensor([[0, 1, 1], [4, 3, 3]])  # duplicates are penalised once
    for params in (GenerationParams(repetition_penalty=2.0), _sampling(repetition_penalty=2.0)):
        out = process_logits(logits, seen, params)
        assert out.tolist() == [[1.0, -2.0, 3.0, 0.5, -4.0],
                                [2.0, -1.0, 3.0, 0.25, -8.0]]
    assert logits[0, 0] == 2.0  # input not modified in place
    # negative ids (virtual placeholders, padding) are not tokens: they are ignored
    out = process_logits(logits, torch.tensor([[-1, 1, -1], [-1, -1, -1]]), GenerationParams(repetition_penalty=2.0))
    assert out.tolist() == [[2.0, -2.0, 3.0, 0.5, -4.0], [2.0, -1.0, 3.0, 0.5, -4.0]]
    assert torch.equal(process_logits(logits, seen, GenerationParams()), logits)


def test_repetition_penalty_changes_greedy_choice():
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    seen = torch.tensor([[0]])
    out = process_logits(logits, seen, GenerationParams(repetition_penalty=1.5))
    assert int(out.argmax()) == 1


def test_generation_params_problems():
    assert GenerationParams().problems() == []
    assert GenerationParams(max_new_tokens=1, temperature=0.0, top_k=5, top_p=1.0).problems() == []
    bad = GenerationParams(max_new_tokens=0, temperature=-0.5, top_k=-1, top_p=0.0, repetition_penalty=0.0)
    problems = bad.problems()
    assert len(problems) == 5
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"):
        assert sum(p.startswith(name) for p in problems) == 1, name
    assert GenerationParams(top_p=1.5).problems() == ["top_p must be in (0, 1], got 1.5"]
    assert GenerationParams(top_p=-0.1).problems() == ["top_p must be in (0, 1], got -0.1"]
    assert GenerationParams(max_new_tokens=-3).problems() == ["max_new_tokens must be >= 1, got -3"]
    assert not math.isnan(GenerationParams().temperature)


@pytest.mark.parametrize("virtual", [True, False])
def test_repetition_penalty_ignores_placeholders_and_padding(tiny_gpt2, monkeypatch, virtual):
    """Virtual-token placeholders and left padding hold the pad id (= EOS for GPT-2) but are not seen text:
    the penalty must not push EOS down, and a row's output must not depend on its batch."""
    lm, tokenizer = tiny_gpt2
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    assert pad == eos
    if not virtual:  # the zero-shot baseline: the same prompts without virtual tokens
        exs = [Example(e.taskname, [t for t, v in zip(e.input_ids, e.virtual_ids) if v < 0],
                       [-1] * sum(v < 0 for v in e.virtual_ids), [0] * sum(v < 0 for v in e.virtual_ids))
               for e in exs]
    real_step, calls = model.step, []

    def step(*args, **kwargs):  # on the first step, EOS narrowly beats every other token
        logits, past = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            logits = logits - logits.min(-1, keepdim=True).values + 1.0  # all positive
            logits[:, eos] = logits.max(-1).values + 0.05
        return logits, past

    monkeypatch.setattr(model, "step", step)
    params = GenerationParams(max_new_tokens=3, repetition_penalty=1.5)
    calls.clear()
    alone = generate(model, [exs[4]], params, pad, eos)
    calls.clear()
    batched = generate(model, [exs[2], exs[4]], params, pad, eos)  # exs[4] is left-padded here
    assert alone == [[]]
    assert batched == [[], []]


# ----------------------------------------------------------------------------- the decode core's rows

def _boost_eos(model, monkeypatch, eos: int, steps: int) -> list:
    """The model's first `steps` next-token distributions (the prompt pass included) put EOS on top; clear
    the returned list to start counting again."""
    real_step, calls = model.step, []

    def step(*args, **kwargs):
        logits, past = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) <= steps:
            logits = logits.clone()
            logits[:, eos] = logits.max(-1).values + 100.0
        return logits, past

    monkeypatch.setattr(model, "step", step)
    return calls


@pytest.mark.parametrize("fixture", MODELS)
def test_min_tokens_to_generate_holds_eos_back_until_n_tokens(fixture, request, monkeypatch):
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    full = generate(model, exs, GenerationParams(max_new_tokens=6, stop_at_eos=False), pad, eos)
    assert all(eos not in o for o in full)
    calls = _boost_eos(model, monkeypatch, eos, steps=2)  # EOS on top for the first two tokens, then as is

    def run(n):
        calls.clear()
        return generate(model, exs, GenerationParams(max_new_tokens=6, min_new_tokens=n), pad, eos)

    assert run(0) == [[] for _ in exs]  # EOS first: nothing generated
    assert run(1) == [o[:1] for o in full]  # one token, then EOS (still on top for the second)
    assert run(2) == full  # EOS held back for both tokens where it was on top: the rest is unchanged


def _reference_logprobs(model, example, tokens, pad) -> torch.Tensor:
    """(n, V) log-softmax of the next-token distribution before each of `tokens`, without a KV cache."""
    batch = collate([example], pad, side="left")
    with torch.no_grad():
        emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (1, T, H)
        emb = torch.cat([emb, model.token_embeddings(torch.tensor([tokens[:-1]]))], dim=1)  # (1, T+n-1, H)
        logits = model.lm(inputs_embeds=emb, use_cache=False).logits[0, -len(tokens):]  # (n, V)
    return logits.float().log_softmax(-1)


@pytest.mark.parametrize("fixture", MODELS)
def test_logprobs_are_the_models_own_distribution_with_top_k(fixture, request):
    """Each generated token's log-probability and its top-k alternatives, from the model's distribution (not
    the processed one: the repetition penalty changes the choice, not the reported numbers)."""
    lm, tokenizer = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    params = GenerationParams(max_new_tokens=5, stop_at_eos=False, repetition_penalty=1.3, logprobs=3)
    rows = decode_rows(model, exs[:3], [DecodeRow(params, eos) for _ in exs[:3]], pad)
    for e, row in zip(exs[:3], rows):
        assert len(row.output_ids) == 5 and len(row.trace) == 5
        ref = _reference_logprobs(model, e, row.output_ids, pad)  # (5, V)
        chosen = ref.gather(1, torch.tensor(row.output_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor([t.logprob for t in row.trace]), chosen, atol=1e-4, rtol=0)
        for t, r in zip(row.trace, ref):
            top = r.topk(3)
            assert [i for i, _ in t.top] == top.indices.tolist()
            torch.testing.assert_close(torch.tensor([v for _, v in t.top]), top.values, atol=1e-4, rtol=0)
    none = decode_rows(model, exs[:1], [DecodeRow(GenerationParams(max_new_tokens=2), eos)], pad)[0]
    assert none.trace == []


def test_stop_strings_end_rows_and_usage_counts_every_generated_token(tiny_gpt2):
    """A stop string completed by token j: the text ends before it and the row reports j tokens generated
    (the issue's example: `stop: "wear"` returned `']}'` with completion_tokens 0)."""
    lm, tokenizer = tiny_gpt2
    model, exs = generation_setup(lm, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    def run(**kw):
        params = GenerationParams(max_new_tokens=8, stop_at_eos=False, **kw)
        row = DecodeRow(params, eos, decode=decode)
        events = [ev[0] for ev in decode_steps(model, exs[:1], [row], pad) if ev[0] is not None]
        return "".join(e.text for e in events), events[-1], row

    text, last, row = run()
    full = row.ids
    assert last.generated == 8 and last.finish_reason == "length" and text == decode(full)
    stop = text[len(decode(full[:3])):][:3]  # a stop string that starts in the fourth token's text
    assert stop.strip()
    j = next(j for j in range(1, 9) if stop in decode(full[:j]))  # the token that completes it
    text, last, row = run(stop=[stop])
    assert text == decode(full)[:decode(full).find(stop)] and last.finish_reason == "stop"
    assert last.generated == j == len(row.ids) and row.ids == full[:j]
    # min_new_tokens=j: the stop string completed by token j does not count; the text keeps it
    text, last, _ = run(stop=[stop], min_new_tokens=j)
    assert last.generated > j and text.startswith(decode(full[:j]))
