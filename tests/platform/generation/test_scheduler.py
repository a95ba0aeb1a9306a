"""The continuous-batching scheduler: rows join and leave a running batch between steps, and every row's greedy
tokens equal those it gets decoded alone (fp32), whatever the arrivals, chunking, cancellations and limits; in bf16
they stay within the tolerance documented in README (Serving)."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.generation.decode import DecodeRow, GenerationParams, generate
from promptray.platform.generation.logprobs import TokenLogprob
from promptray.platform.generation.scheduler import (
    Limits,
    QueueFullError,
    RequestTooLargeError,
    Scheduler,
    run_to_end,
)
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import MODELS, generation_setup

LENGTHS = [7, 3, 9, 5, 4]  # max_new_tokens per example: rows end at different steps


def setup(request, fixture: str = "tiny_gpt2"):
    lm, tok = request.getfixturevalue(fixture)
    model, exs = generation_setup(lm, tok)
    return model, exs, tok.pad_token_id, tok.eos_token_id


def alone(model, exs, pad, eos, lengths=LENGTHS) -> list[list[int]]:
    """Each example decoded alone (no other rows), greedy, no EOS stop: the reference."""
    return [generate(model, [e], GenerationParams(max_new_tokens=n, stop_at_eos=False), pad, eos)[0]
            for e, n in zip(exs, lengths)]


def row(n: int, eos: int) -> DecodeRow:
    return DecodeRow(GenerationParams(max_new_tokens=n, stop_at_eos=False), eos)


def drive(sched: Scheduler, arrivals: dict[int, list], steps: int = 200) -> tuple[dict, list[dict]]:
    """Step `sched`, submitting arrivals[k] (rid, example, row) before step k; (finished rows by rid,
    snapshot after each step)."""
    done, snaps = {}, []
    for k in range(steps):
        for item in arrivals.get(k, []):
            sched.submit(*item)
        for out in sched.step():
            assert out.error is None, out.error
            if out.event.finish_reason is not None:
                done[out.rid] = out.event
        snaps.append(sched.snapshot())
        if sched.idle and k >= max(arrivals, default=0):
            break
    return done, snaps


@pytest.mark.parametrize("fixture", MODELS)
def test_staggered_arrivals_equal_each_row_decoded_alone(fixture, request):
    model, exs, pad, eos = setup(request, fixture)
    expected = alone(model, exs, pad, eos)
    rows = [row(n, eos) for n in LENGTHS]
    sched = Scheduler(model, pad, limits=Limits(max_rows=3))
    arrivals = {0: [(0, exs[0], rows[0])], 2: [(1, exs[1], rows[1]), (2, exs[2], rows[2])],
                3: [(3, exs[3], rows[3])], 6: [(4, exs[4], rows[4])]}
    done, snaps = drive(sched, arrivals)
    assert [r.output_ids for r in rows] == expected
    assert len({tuple(o) for o in expected}) > 2  # prompts matter
    assert sorted(done) == [0, 1, 2, 3, 4] and all(e.finish_reason == "length" for e in done.values())
    running = [s["running"] for s in snaps]
    assert max(running) == 3  # max_rows held
    drop = next(k for k in range(1, len(running)) if running[k] < running[k - 1])
    assert max(running[drop:]) == 3  # rows joined again after one left, mid-run
    assert sched.stats.steps["mixed_task_batches"] > 0 and sched.stats.tokens == sum(LENGTHS)


def test_long_prompts_are_prefilled_in_chunks_between_decoding_steps(request):
    model, exs, pad, eos = setup(request)
    expected = alone(model, exs, pad, eos)
    rows = [row(n, eos) for n in LENGTHS]
    first = min(range(len(exs)), key=lambda i: len(exs[i]))
    longest = max(range(len(exs)), key=lambda i: len(exs[i]))
    chunk = len(exs[first])  # the shortest prompt goes whole, the longest in several chunks
    assert len(exs[longest]) > 2 * chunk
    sched = Scheduler(model, pad, limits=Limits(max_rows=4, prefill_chunk_tokens=chunk))
    sched.submit(first, exs[first], rows[first])
    sched.step()  # the first row is decoding now
    sched.submit(longest, exs[longest], rows[longest])
    out = sched.step()
    assert sched.snapshot()["prefilling"] == 1 and [o.rid for o in out] == []  # its prompt goes in chunks
    assert len(rows[first].ids) == 2 and len(rows[longest].ids) == 0  # the running row did not wait
    rest = {0: [(i, exs[i], rows[i]) for i in range(len(exs)) if i not in (first, longest)]}
    drive(sched, rest)
    assert [r.output_ids for r in rows] == expected


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(request):
    model, exs, pad, eos = setup(request)
    lengths = [8] * len(exs)
    expected = alone(model, exs, pad, eos, lengths)
    rows = [row(n, eos) for n in lengths]
    sched = Scheduler(model, pad, limits=Limits(max_rows=8))
    done, _ = drive(sched, {0: [(i, exs[i], r) for i, r in enumerate(rows)]}, steps=3)
    assert sched.snapshot()["running"] == 5 and len(rows[2].ids) == 3
    sched.cancel(2)
    outs = sched.step()
    assert 2 not in {o.rid for o in outs} and sched.snapshot()["running"] == 4
    assert len(rows[2].ids) == 3 and rows[2].finish_reason == "cancelled"
    done, _ = drive(sched, {})
    assert sorted(done) == [0, 1, 3, 4] and sched.stats.requests["cancelled"] == 1
    assert [r.output_ids for i, r in enumerate(rows) if i != 2] == [e for i, e in enumerate(expected) if i != 2]


def test_the_kv_budget_queues_requests_and_a_full_queue_refuses(request):
    model, exs, pad, eos = setup(request)
    n = 6
    expected = alone(model, exs, pad, eos, [n] * len(exs))
    longest = max(len(e) for e in exs) + n
    sched = Scheduler(model, pad, limits=Limits(max_rows=8, kv_budget_tokens=2 * longest, max_waiting=3))
    rows = [row(n, eos) for _ in exs]
    for i in range(5):  # the next step admits 2 (the KV budget), 3 wait
        sched.submit(i, exs[i], rows[i])
    with pytest.raises(QueueFullError) as full:
        sched.submit(5, exs[0], row(n, eos))
    assert full.value.retry_after_s >= 1 and "its queue holds 3" in str(full.value)
    assert sched.stats.requests["rejected"] == 1
    with pytest.raises(RequestTooLargeError, match="at most 11 inputs per request"):
        sched.submit_many([(10 + i, exs[0], row(n, eos)) for i in range(12)])  # never: 3 queued + 8 rows
    sched.step()
    snap = sched.snapshot()
    assert snap["running"] == 2 and snap["waiting"] == 3  # the budget holds the others back
    assert snap["kv_tokens_reserved"] <= 2 * longest
    with pytest.raises(QueueFullError):
        sched.submit(5, exs[0], row(n, eos))
    done, snaps = drive(sched, {})
    assert all(s["kv_tokens_reserved"] <= 2 * longest for s in snaps) and sorted(done) == [0, 1, 2, 3, 4]
    assert [r.output_ids for r in rows] == expected
    with pytest.raises(RequestTooLargeError):
        sched.submit(9, exs[0], row(2 * longest, eos))


def test_a_short_request_behind_long_ones_finishes_in_its_own_time(request):
    """Continuous: the short row joins at once and ends after its own 2 tokens; static: it waits for the
    long batch to end."""
    model, exs, pad, eos = setup(request)
    finished_at = {}
    for policy in ("continuous", "static"):
        sched = Scheduler(model, pad, limits=Limits(max_rows=4), policy=policy)
        arrivals = {0: [(0, exs[0], row(30, eos)), (1, exs[1], row(30, eos))], 3: [(2, exs[4], row(2, eos))]}
        step_of = {}
        for k in range(100):
            for item in arrivals.get(k, []):
                sched.submit(*item)
            for out in sched.step():
                if out.event.finish_reason:
                    step_of[out.rid] = k
            if sched.idle and k > 3:
                break
        finished_at[policy] = step_of
    assert finished_at["continuous"][2] == 4  # admitted, prefilled and decoded at step 3, second token at 4
    assert finished_at["static"][2] >= finished_at["static"][0] + 2  # after the long batch
    assert finished_at["continuous"][0] == finished_at["static"][0] == 29


def test_static_policy_and_seeded_sampling_reproduce_the_batch_path(request):
    """Offline sampled generation runs static batches: the same tokens as `generate` on that batch."""
    model, exs, pad, eos = setup(request)
    params = GenerationParams(max_new_tokens=6, greedy=False, temperature=1.0, top_k=20, seed=5,
                              stop_at_eos=False)
    expected = generate(model, exs[:3], params, pad, eos)
    gen = torch.Generator().manual_seed(5)
    rows = [DecodeRow(params, eos, generator=gen) for _ in range(3)]
    sched = Scheduler(model, pad, limits=Limits(max_rows=3, max_waiting=3), policy="static")
    run_to_end(sched, [(i, exs[i], r) for i, r in enumerate(rows)])
    assert [r.output_ids for r in rows] == expected
    assert sched.stats.steps["max_rows"] == 3 and sched.stats.steps["batches"] == 6


BF16_TOLERANCE = 0.5  # nats: README, Serving ("bf16: the documented tolerance")


def bf16_deviation(ref: list[TokenLogprob], got: list[TokenLogprob]) -> tuple[float, float]:
    """Up to and including the first differing token: (largest |chosen token's log-probability - the reference's|,
    the reference's top-1/top-2 margin at that differing token, 0.0 when none differs)."""
    worst = 0.0
    for a, b in zip(ref, got):
        worst = max(worst, abs(a.logprob - b.logprob))
        if a.token_id != b.token_id:
            return worst, a.top[0][1] - a.top[1][1]
    return worst, 0.0


@pytest.mark.parametrize("fixture", MODELS)
def test_bf16_staggered_arrivals_stay_within_the_documented_tolerance(fixture, request):
    """bf16, greedy: every row's tokens under staggered arrivals vs the same request decoded alone; each chosen
    token's log-probability within BF16_TOLERANCE of the reference's, and a token may differ only where the
    reference's top-1/top-2 margin is below it."""
    lm, tok = request.getfixturevalue(fixture)
    fp32, exs = generation_setup(lm, tok)
    model = PromptLearningModel(lm, fp32.bank, "bf16")
    with torch.no_grad():  # peaked next-token distributions, as a trained model's (random weights: near uniform)
        lm.get_output_embeddings().weight.mul_(30)
    pad, eos, lengths = tok.pad_token_id, tok.eos_token_id, [12, 4, 16, 6, 9]

    def logprob_row(n: int) -> DecodeRow:
        return DecodeRow(GenerationParams(max_new_tokens=n, stop_at_eos=False, logprobs=2), eos)

    ref = [logprob_row(n) for n in lengths]
    for i, (e, r) in enumerate(zip(exs, ref)):
        run_to_end(Scheduler(model, pad, limits=Limits(max_rows=1)), [(i, e, r)])
    rows = [logprob_row(n) for n in lengths]
    sched = Scheduler(model, pad, limits=Limits(max_rows=3))
    drive(sched, {0: [(0, exs[0], rows[0])], 1: [(1, exs[1], rows[1]), (2, exs[2], rows[2])],
                  4: [(3, exs[3], rows[3])], 5: [(4, exs[4], rows[4])]})
    assert [len(r.trace) for r in rows] == lengths and sched.stats.steps["max_rows"] == 3
    assert lm.dtype == torch.bfloat16 and ref[0].trace[0].logprob > -5  # bf16, a peaked distribution
    for a, b in zip(ref, rows):
        worst, margin_at_flip = bf16_deviation(a.trace, b.trace)
        assert worst <= BF16_TOLERANCE and margin_at_flip < BF16_TOLERANCE


def test_limits_and_policy_are_checked():
    with pytest.raises(ValueError, match="max_rows=0"):
        Limits(max_rows=0)
    with pytest.raises(ValueError, match="batching policy 'eager'"):
        Scheduler(None, 0, policy="eager")
