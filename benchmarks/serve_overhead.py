"""The virtual tokens' overhead on the continuous scheduler: the mixed workload with and without them.

Part of `serve_bench --mixed` (issue 15's last target: at most 10% slower than the bare base model on the
same scheduler). In-process, no HTTP: one `ServeEngine` (bf16, prefix cache on, the serving settings of the
mixed run) and its `scheduler()` (policy continuous, max_batch_size 16), driven by a closed loop of
`clients` (16) synchronous clients: whenever a request ends, its client's next request is submitted before
the next step, so both sides see the same arrival pattern in steps. Sides:
- "virtual": the mixed requests as served (tasks of 5 to 100 virtual tokens, prefix cache on);
- "bare": the same requests without their virtual tokens (`strip_virtual`: the template's text and the input
  only, as the offline part of serve_bench builds its bare side; no cached prefix applies).
Every request generates exactly its class's tokens (`min_tokens` = `max_tokens`), so both sides produce the
same completion tokens. Rounds alternate the order (virtual, bare, bare, virtual, ...) after one untimed
warm-up round per side; the medians decide: slowdown = median seconds (virtual) / median seconds (bare) - 1.
Where the time goes is recorded per side (of its median_low round): decoding steps, rows per step, the mean
cache width a running row attends over, and the seconds spent in prompt passes and in decoding passes; the
load average around the whole measurement.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Optional

VIRTUAL, BARE = "virtual", "bare"
OVERHEAD_TARGET = 0.10


def timed(fn, spent: list[float]):
    """`fn` that adds the seconds of each call to spent[0]."""
    def run():
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            spent[0] += time.perf_counter() - t0
    return run


def drive(sched, prepared: list, rows: list, clients: int, per_step: Optional[int] = None,
          on_step: Optional[Callable] = None) -> None:
    """Submit prepared[i] (its example) with rows[i] to scheduler `sched`, at most `clients` in flight and
    `per_step` new ones per step (None: no limit), and step until every row ends; `on_step(sched)` after each
    step. A request's error is raised."""
    pending, in_flight = deque(range(len(prepared))), 0
    while pending or not sched.idle:
        for _ in range(min(per_step or clients, clients - in_flight, len(pending))):
            i = pending.popleft()
            sched.submit(i, prepared[i].example, rows[i])
            in_flight += 1
        for out in sched.step():
            if out.error is not None:
                raise out.error
            in_flight -= out.event.finish_reason is not None
        if on_step is not None:
            on_step(sched)


def closed_loop(engine, prepared: list, clients: int) -> tuple[float, int, dict]:
    """Run `prepared` through a fresh continuous scheduler, at most `clients` in flight: (seconds, completion
    tokens, where the time went: decoding steps, rows per step, mean cache width (KV positions each running row
    attends over, padding included), seconds in prompt passes and in decoding passes)."""
    sched = engine.scheduler()
    prefill, decode = [0.0], [0.0]
    sched._prefill, sched._decode = timed(sched._prefill, prefill), timed(sched._decode, decode)  # timing only
    rows, widths = [engine.row(p) for p in prepared], []

    def width(sched) -> None:
        snap = sched.snapshot()
        if snap["running"]:
            widths.append(snap["kv_tokens_held"] / snap["running"])

    t0 = time.perf_counter()
    drive(sched, prepared, rows, clients, on_step=width)
    seconds = time.perf_counter() - t0
    steps = sched.stats.steps
    where = {"decoding_steps": steps["batches"], "mean_rows_per_step": round(steps["rows"] / steps["batches"], 2),
             "mean_cache_width": round(statistics.fmean(widths), 1), "prefill_s": round(prefill[0], 3),
             "decode_s": round(decode[0], 3)}
    return seconds, sum(len(r.ids) for r in rows), where


def bare(prepared: list) -> list:
    """The same prepared requests without virtual tokens (the template's own text and the inputs only)."""
    from promptray.platform.generation.inference import strip_virtual
    from promptray.serve.engine import Prepared

    return [Prepared(p.task, strip_virtual([p.example])[0], p.params) for p in prepared]


def run_overhead(uri: str, model: str, reqs: list[dict], clients: int, rounds: int, threads: int,
                 gpu: bool) -> dict:
    """Measure both sides on `reqs` (serve_mixed's workload bodies) for `rounds` timed rounds each."""
    import torch

    from promptray.serve.engine import ServeEngine
    from promptray.serve.schemas import SamplingParams, ServerSettings

    torch.set_num_threads(threads)
    settings = ServerSettings(table=uri, model=model, precision="auto", accelerator="cuda" if gpu else "cpu",
                              batching="continuous", max_batch_size=16, threads=threads, api_keys_env=None)
    engine = ServeEngine(settings)
    params = [SamplingParams(max_tokens=r["max_tokens"], min_tokens=r["min_tokens"], greedy=True) for r in reqs]
    prepared = [engine.encode(r["taskname"], r["fields"], None, p) for r, p in zip(reqs, params)]
    sides = {VIRTUAL: prepared, BARE: bare(prepared)}
    for items in sides.values():  # warm-up: every task loaded, its prefix cached
        closed_loop(engine, items[:8], clients)
    times, tokens, where = {s: [] for s in sides}, {}, {s: [] for s in sides}
    load0 = os.getloadavg()
    for r in range(rounds):
        for side in ((VIRTUAL, BARE) if r % 2 == 0 else (BARE, VIRTUAL)):
            seconds, tokens[side], w = closed_loop(engine, sides[side], clients)
            times[side].append(seconds)
            where[side].append(w)
    load1 = os.getloadavg()
    med = {s: statistics.median(t) for s, t in times.items()}
    per_side = {s: {"seconds": [round(t, 3) for t in times[s]], "seconds_median": round(med[s], 3),
                    "completion_tokens": tokens[s], "completion_tokens_per_s": round(tokens[s] / med[s], 2),
                    "prompt_tokens_mean": round(statistics.fmean(len(p.example) for p in sides[s]), 1),
                    **where[s][times[s].index(statistics.median_low(times[s]))]}
                for s in sides}
    slowdown = round(med[VIRTUAL] / med[BARE] - 1, 4)
    return {"method": "in-process closed loop on ServeEngine.scheduler() (continuous, bf16, prefix cache on), "
                      f"{clients} clients, {rounds} alternating rounds per side after a warm-up; medians",
            "rounds": rounds, "sides": per_side, "slowdown_vs_bare": slowdown,
            "target_max_slowdown": OVERHEAD_TARGET, "met": slowdown <= OVERHEAD_TARGET,
            "load_average_1_5_15min": {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in load1]}}
