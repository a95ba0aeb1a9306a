"""bf16 serving vs each request decoded alone: how far the batch moves a row's greedy tokens (README, Serving).

    python -m benchmarks.serve_bf16_tolerance [--requests 32] [--work-dir DIR]

The mixed workload of `serve_bench --mixed` (tasks of 5 to 100 virtual tokens, 4- and 48-token completions,
smollm2-135m in bf16, prefix cache on) through `ServeEngine.scheduler()`: first every request alone (a
scheduler of one row), then all of them under several arrival patterns (all at once, a closed loop of 4 and
of 16 clients, one new request per step). For each request under each pattern: the largest |log-probability
of the chosen token - the alone decode's| up to the first token that differs, and the alone decode's
top-1/top-2 margin at that token. The README's tolerance: at most 0.5 nats, and a differing token only at a
margin below 0.5 nats. Result: results/serve_bf16_tolerance.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import MODEL, machine, write_result
from benchmarks.serve_overhead import drive

TOLERANCE = 0.5  # nats


def deviation(ref, got) -> tuple[float, float | None]:
    """(largest |logprob difference| up to the first differing token, the reference's top-1/top-2 margin there
    or None when no token differs)."""
    worst = 0.0
    for a, b in zip(ref, got):
        worst = max(worst, abs(a.logprob - b.logprob))
        if a.token_id != b.token_id:
            return worst, a.top[0][1] - a.top[1][1]
    return worst, None


def run_pattern(engine, prepared: list, clients: int, per_step: int) -> list:
    """Rows of every request after running them with at most `clients` in flight, `per_step` new ones per
    step at most."""
    rows = [engine.row(p) for p in prepared]
    drive(engine.scheduler(), prepared, rows, clients, per_step)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--work-dir", default=None)
    a = ap.parse_args(argv)
    import torch

    from benchmarks.serve_mixed import mixed_requests
    from promptray.serve.engine import ServeEngine
    from promptray.serve.schemas import SamplingParams, ServerSettings

    torch.set_num_threads(1)
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="promptray_bf16_tol_"))
    uri, _, reqs = mixed_requests(work, a.requests)
    engine = ServeEngine(ServerSettings(table=uri, model=MODEL, precision="bf16", accelerator="cpu",
                                        max_batch_size=16, threads=1, api_keys_env=None))
    prepared = [engine.encode(r["taskname"], r["fields"], None,
                              SamplingParams(max_tokens=r["max_tokens"], min_tokens=r["min_tokens"], greedy=True,
                                             logprobs=2)) for r in reqs]
    alone = [run_pattern(engine, [p], 1, 1)[0] for p in prepared]
    patterns = {"all at once": (len(prepared), len(prepared)), "closed loop of 4": (4, 4),
                "closed loop of 16": (16, 16), "one per step": (16, 1)}
    results = {}
    for name, (clients, per_step) in patterns.items():
        rows = run_pattern(engine, prepared, clients, per_step)
        devs = [deviation(r.trace, g.trace) for r, g in zip(alone, rows)]
        flips = [m for _, m in devs if m is not None]
        results[name] = {"worst_logprob_deviation_nats": round(max(d for d, _ in devs), 4),
                         "rows_with_a_differing_token": len(flips),
                         "largest_margin_at_a_differing_token": round(max(flips), 4) if flips else None}
        print(name, results[name])
    met = all(r["worst_logprob_deviation_nats"] <= TOLERANCE and (r["largest_margin_at_a_differing_token"] or 0)
              < TOLERANCE for r in results.values())
    result = {"benchmark": "serve_bf16_tolerance", "machine": machine(), "model": MODEL,
              "requests": len(prepared), "tolerance_nats": TOLERANCE, "patterns": results, "within_tolerance": met}
    print(f"within the README's tolerance: {met}; wrote {write_result('serve_bf16_tolerance', result)}")
    return result


if __name__ == "__main__":
    main()
