"""Serving a mixed workload over HTTP: static batches vs continuous batching, side by side in one run.

Workload: smollm2-135m, 4 tasks with 5, 20, 50 and 100 text-initialised virtual tokens (untrained: speed does
not depend on the values), the demo's movie-review snippets as inputs; request i asks task i % 4, and is a
short one (4 tokens) for even i, a long one (48 tokens) for odd i, with `min_tokens` = `max_tokens` so every
request generates exactly its class's tokens (greedy). A closed loop of `--clients` (16) concurrent
connections streams `/v1/generate` (SSE) until `--requests` are answered.

Sides, back to back on the same workload and client:
- "baseline": the server of `--baseline-commit` (default 93ec0ea, main before issue 15: `@serve.batch` static
  batches, max_batch_size 16, 10 ms wait), run first in a child process with its own local Ray and Serve and
  the commit's code (benchmarks/serve_baseline.py; the JSON records the commit and the `serve/app.py` file its
  Ray workers import);
- "static" and "continuous": this commit's app (`build_app`, one replica, --threads torch threads and CPUs, bf16,
  prefix cache on, max_batch_size 16) with `batching: static` (a batch forms when the last one ended, waits up
  to 10 ms to fill and runs until its longest row ends) and `batching: continuous`, deployed one after the
  other on one local Ray.
Each side is warmed up (every task loaded) before timing; the load average is recorded around each.

Then (`--overhead-rounds`, default 3; 0 skips it) the virtual tokens' overhead against the bare base model on the
continuous scheduler, in-process, same requests and closed loop (benchmarks/serve_overhead.py).

Per side: completion tokens/s, requests/s, errors; time to first token (first SSE event with text) and
latency p50/p99 per class, as the client sees them (the client shares the machine with the server).
Targets of issue 15, against the baseline (main's server): continuous >= 2.5x its completion tokens/s, short
p50 <= half of its, no errors; the same ratios against the static policy are reported too.

    python -m benchmarks.serve_bench --mixed [--requests 96] [--clients 16] [--threads 1] [--gpu]
        [--baseline-commit 93ec0ea | --no-baseline] [--overhead-rounds 3] [--only-overhead]

Results: benchmarks/results/serve_bench_mixed.json.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import MODEL, closed_loop_clients
from benchmarks.serve_baseline import baseline_server, head_commit
from benchmarks.serve_overhead import run_overhead

VIRTUAL = {"sentiment": 5, "polarity": 20, "tone": 50, "verdict": 100}
INIT = "Say whether the critic liked the film: answer positive or negative, nothing else, in one word"
SHORT, LONG = 4, 48
TOKENS_TARGET, SHORT_P50_TARGET = 2.5, 0.5


def build_mixed_table(uri: str) -> dict[str, str]:
    """Publish the 4 tasks (5..100 text-initialised virtual tokens) for smollm2-135m."""
    from promptray.platform.model.fingerprint import fingerprint_model
    from promptray.platform.model.hub import load_base_model
    from promptray.platform.model.prompt_encoder import init_from_text
    from promptray.platform.table.table import PromptTable, TaskPrompt

    lm, tok = load_base_model(MODEL)
    fp, vocab = fingerprint_model(lm, MODEL), lm.get_input_embeddings()
    prompts = []
    for name, n in VIRTUAL.items():
        template = {"taskname": name, "prompt_template": f"<|VIRTUAL_PROMPT_0|> {name.title()} of: {{sentence}}\n"
                    "Answer: {label}", "total_virtual_tokens": n, "virtual_token_splits": [n],
                    "truncate_field": "sentence", "answer_field": "label"}
        prompts.append(TaskPrompt(taskname=name, embeddings=init_from_text(INIT, n, tok, vocab), template=template,
                                  style="prompt-tuning", base_model=fp, source={"job": "serve_bench_mixed"}))
    return PromptTable(uri).publish(prompts)


def workload(sentences: list[str], n: int) -> list[dict]:
    """Request i: task i % 4, snippet i, short (even i) or long (odd i); exactly max_tokens tokens each."""
    names = list(VIRTUAL)
    out = []
    for i in range(n):
        k = SHORT if i % 2 == 0 else LONG
        out.append({"taskname": names[i % 4], "fields": {"sentence": sentences[i % len(sentences)]},
                    "max_tokens": k, "min_tokens": k, "greedy": True, "stream": True})
    return out


def one_request(session, url: str, body: dict) -> dict:
    """Stream one request: its latency, time to first token, tokens and status."""
    t0 = time.perf_counter()
    ttft, text, status = None, "", None
    with session.post(url, json=body, stream=True, timeout=600) as r:
        status = r.status_code
        if status == 200:
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event["text"] and ttft is None:
                    ttft = time.perf_counter() - t0
                text += event["text"]
    return {"status": status, "latency": time.perf_counter() - t0, "ttft": ttft, "text": text,
            "class": "short" if body["max_tokens"] == SHORT else "long", "tokens": body["max_tokens"]}


def closed_loop(base: str, reqs: list[dict], clients: int) -> tuple[list[dict], float]:
    """`clients` connections, each sending its next request when the last one ended; (results, seconds)."""
    results = [None] * len(reqs)

    def send(s, i: int) -> None:
        results[i] = one_request(s, f"{base}/v1/generate", reqs[i])

    return results, closed_loop_clients(len(reqs), clients, send)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 4)


def summarize(results: list[dict], seconds: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    per_class = {}
    for c in ("short", "long"):
        rs = [r for r in ok if r["class"] == c]
        lat, ttft = [r["latency"] for r in rs], [r["ttft"] for r in rs if r["ttft"] is not None]
        per_class[c] = {"requests": len(rs), "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99),
                        "ttft_p50_s": pct(ttft, 50) if ttft else None, "ttft_p99_s": pct(ttft, 99) if ttft else None}
    tokens = sum(r["tokens"] for r in ok)
    ttft_all = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {"seconds": round(seconds, 3), "requests": len(results), "errors": len(results) - len(ok),
            "error_statuses": sorted({r["status"] for r in results if r["status"] != 200}),
            "completion_tokens": tokens, "completion_tokens_per_s": round(tokens / seconds, 2),
            "requests_per_s": round(len(ok) / seconds, 3),
            "ttft_mean_s": round(statistics.fmean(ttft_all), 4) if ttft_all else None, "per_class": per_class}


def measure(base: str, reqs: list[dict], clients: int) -> tuple[dict, list[str], dict]:
    """Warm a deployed server up (every task loaded), run the closed loop, read /healthz: (summary, texts, health)."""
    import requests

    warm = workload(["A fine, warm film."], 4)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: requests.post(f"{base}/v1/generate", json={**b, "stream": False}, timeout=600)
                      .raise_for_status(), warm))
    load0 = os.getloadavg()
    results, seconds = closed_loop(base, reqs, clients)
    health = requests.get(f"{base}/healthz", timeout=30).json()
    out = summarize(results, seconds)
    out["load_average_1_5_15min"] = {"start": [round(x, 2) for x in load0],
                                     "end": [round(x, 2) for x in os.getloadavg()]}
    out["server"] = {k: health.get(k) for k in ("batching", "precision", "device", "torch_threads")}
    return out, [r["text"] for r in results], health


def run_side(serve, build_app, settings, base: str, reqs: list[dict], clients: int, actor: dict) -> dict:
    """Deploy one side of this commit's app, measure it, delete it."""
    serve.run(build_app(settings, ray_actor_options=actor), name="bench", route_prefix="/")
    try:
        out, texts, health = measure(base, reqs, clients)
    finally:
        serve.delete("bench")
    out["server"]["scheduler"] = health.get("scheduler")
    out["server"]["commit"] = head_commit()
    return out, texts


def run_baseline(commit: str, work: Path, uri: str, reqs: list[dict], clients: int, threads: int,
                 gpu: bool) -> tuple[dict, list[str]]:
    """The server of `commit` (`@serve.batch`), in its own process with its own Ray: measure it."""
    from promptray.platform.ports import free_ports

    port = free_ports(1)[0]
    with baseline_server(commit, work, table=uri, model=MODEL, port=port, threads=threads, gpu=gpu) as info:
        out, texts, health = measure(f"http://127.0.0.1:{port}", reqs, clients)
    b = health.get("batches") or {}
    out["server"].update(batching="serve.batch", commit=info["commit"], driver_app_file=info["driver_app_file"],
                         worker_app_file=info["worker_app_file"], batches=b,
                         mean_rows_per_batch=round(b["rows"] / b["batches"], 2) if b.get("batches") else None)
    return out, texts


def ratios(c: dict, other: dict) -> dict:
    """Continuous side against another: completion tokens/s ratio, short-request p50 ratio, targets met."""
    tokens = round(c["completion_tokens_per_s"] / other["completion_tokens_per_s"], 2)
    short = round(c["per_class"]["short"]["latency_p50_s"] / other["per_class"]["short"]["latency_p50_s"], 3)
    return {"completion_tokens_per_s_ratio": tokens, "met_tokens": tokens >= TOKENS_TARGET,
            "short_p50_ratio": short, "met_short_p50": short <= SHORT_P50_TARGET,
            "no_errors": c["errors"] == other["errors"] == 0}


def mixed_requests(work: Path, n_requests: int) -> tuple[str, dict[str, str], list[dict]]:
    """(table uri, published versions, request bodies) of the mixed workload, the table built under `work`."""
    from benchmarks.common import read_jsonl, sentiment_splits

    sentences = [r["sentence"] for r in read_jsonl(sentiment_splits(work / "data")["test"])]
    uri = str(work / "mixed_table")
    return uri, build_mixed_table(uri), workload(sentences, n_requests)


def run_overhead_only(work: Path, n_requests: int, clients: int, threads: int, gpu: bool, rounds: int) -> dict:
    """`--only-overhead`: the virtual tokens' overhead on the continuous scheduler, no HTTP sides."""
    uri, versions, reqs = mixed_requests(work, n_requests)
    overhead = run_overhead(uri, MODEL, reqs, clients, rounds, threads, gpu)
    return {"settings": {"model": MODEL, "virtual_tokens": VIRTUAL, "classes": {"short": SHORT, "long": LONG},
                         "requests": n_requests, "clients": clients, "threads": threads, "gpu": gpu,
                         "table_versions": versions, "commit": head_commit()},
            "virtual_tokens_overhead": overhead}


def run_mixed(work: Path, n_requests: int, clients: int, threads: int, gpu: bool,
              baseline_commit: str | None = None, overhead_rounds: int = 0) -> dict:
    """Sides: `baseline_commit`'s server (when given; first, in its own process and Ray), then this commit's
    app with static and with continuous batching (one local Ray), back to back on the same workload; then,
    with `overhead_rounds`, the virtual tokens' overhead on the continuous scheduler in-process
    (benchmarks/serve_overhead.py)."""
    import ray
    from ray import serve

    from promptray.platform.ports import free_ports
    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    uri, versions, reqs = mixed_requests(work, n_requests)
    sides, texts = {}, {}
    if baseline_commit:
        sides["baseline"], texts["baseline"] = run_baseline(baseline_commit, work, uri, reqs, clients, threads, gpu)
    port = free_ports(1)[0]
    actor = {"num_cpus": threads, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}},
             **({"num_gpus": 1} if gpu else {})}
    ray.init(address="local", num_cpus=max(threads, os.cpu_count() or 1), include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        for policy in ("static", "continuous"):
            settings = ServerSettings(table=uri, model=MODEL, precision="auto", accelerator="cuda" if gpu else "cpu",
                                      batching=policy, max_batch_size=16, batch_wait_timeout_s=0.01,
                                      threads=threads, api_keys_env=None)
            sides[policy], texts[policy] = run_side(serve, build_app, settings, base, reqs, clients, actor)
    finally:
        serve.shutdown()
        ray.shutdown()
    same = {f"{a}_vs_continuous": round(sum(x == y for x, y in zip(texts[a], texts["continuous"])) / len(reqs), 3)
            for a in texts if a != "continuous"}
    targets = {"vs_static_policy": ratios(sides["continuous"], sides["static"])}
    if "baseline" in sides:
        targets = {"vs_baseline": ratios(sides["continuous"], sides["baseline"]), **targets}
    overhead = run_overhead(uri, MODEL, reqs, clients, overhead_rounds, threads, gpu) if overhead_rounds else None
    if overhead:
        targets["virtual_tokens_overhead_vs_bare"] = {k: overhead[k] for k in ("slowdown_vs_bare", "met")}
    return {"settings": {"model": MODEL, "virtual_tokens": VIRTUAL, "classes": {"short": SHORT, "long": LONG},
                         "requests": n_requests, "clients": clients, "threads": threads, "gpu": gpu,
                         "baseline_commit": baseline_commit, "table_versions": versions},
            "sides": sides, "identical_texts": same, "virtual_tokens_overhead": overhead, "targets": targets}
