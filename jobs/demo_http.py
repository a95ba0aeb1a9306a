"""The demo's HTTP side: requests to the served prompt table (`serve/app.py`'s routes), timed, with the standard
library's client only; held-out accuracy of each task as the server answers it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from tqdm.auto import tqdm

from promptray.platform.errors import PromptrayError
from promptray.platform.generation.inference import exact_match

# greedy; the labels are one or two words, ended by a new line (`stop`; exact match reads the first line anyway)
GREEDY = {"max_tokens": 4, "temperature": 0, "stop": ["\n"]}
CHUNK = 16  # inputs per scoring request (the server's default max_batch_size)


class DemoRequestError(PromptrayError):
    """The demo's server answered a request with an error (the status and OpenAI-shaped error body)."""


def _open(url: str, body: Optional[dict], timeout: float):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise DemoRequestError(f"{'POST' if body is not None else 'GET'} {url} answered {e.code}: {detail}") from None


def call(url: str, body: Optional[dict] = None, timeout: float = 600.0) -> tuple[Any, float]:
    """(the JSON answer, seconds) of a GET (body None) or POST of `body` as JSON."""
    t0 = time.perf_counter()
    with _open(url, body, timeout) as r:
        answer = json.loads(r.read())
    return answer, time.perf_counter() - t0


def stream(url: str, body: dict, timeout: float = 600.0) -> tuple[list[dict], float, float]:
    """POST with "stream": true: (the server-sent events' JSON payloads up to [DONE], seconds to the first one,
    seconds to the end)."""
    t0, first, events = time.perf_counter(), None, []
    with _open(url, {**body, "stream": True}, timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            first = first if first is not None else time.perf_counter() - t0
            events.append(json.loads(line[len("data: "):]))
    return events, first or 0.0, time.perf_counter() - t0


def served_tasks(base: str) -> dict[str, str]:
    """taskname -> the version the server serves now (GET /v1/tasks)."""
    return {t["name"]: t["version"] for t in call(f"{base}/v1/tasks")[0]}


def _inputs(records: Sequence[dict], fields: dict[str, str]) -> list[dict]:
    return [{"taskname": r["taskname"], "fields": {fields[r["taskname"]]: r[fields[r["taskname"]]]}} for r in records]


def mixed_requests(base: str, records: Sequence[dict], fields: dict[str, str]) -> list[dict]:
    """Three requests sent at once, so that the server batches their inputs together: POST /v1/generate with
    `records` but the first two (inputs of several tasks), /v1/completions (OpenAI's route) with the second
    record, and /v1/generate streamed (server-sent events) with the first. `fields`: each task's input field.
    One row per answer: route, task, version, input, answer, latency_ms (the streamed one also first_chunk_ms
    and its chunks)."""
    streamed, one, batch = records[0], records[1], list(records[2:])
    completion = {"model": one["taskname"], "prompt": one[fields[one["taskname"]]], **GREEDY}
    with ThreadPoolExecutor(3) as pool:
        gen = pool.submit(call, f"{base}/v1/generate", {"inputs": _inputs(batch, fields), **GREEDY})
        comp = pool.submit(call, f"{base}/v1/completions", completion)
        st = pool.submit(stream, f"{base}/v1/generate", {"inputs": _inputs([streamed], fields), **GREEDY})
        (gen_answer, gen_s), (comp_answer, comp_s) = gen.result(), comp.result()
        events, first_s, stream_s = st.result()
    rows = [{"route": "/v1/generate", "task": c["taskname"], "version": c["version"],
             "input": r[fields[r["taskname"]]], "answer": c["text"].strip(), "latency_ms": round(1000 * gen_s)}
            for r, c in zip(batch, gen_answer["completions"])]
    rows.append({"route": "/v1/completions", "task": one["taskname"], "version": comp_answer["system_fingerprint"],
                 "input": completion["prompt"], "answer": comp_answer["choices"][0]["text"].strip(),
                 "latency_ms": round(1000 * comp_s)})
    pieces = [e["text"] for e in events]
    rows.append({"route": "/v1/generate (stream)", "task": streamed["taskname"],
                 "version": events[0]["version"] if events else None, "input": streamed[fields[streamed["taskname"]]],
                 "answer": "".join(pieces).strip(), "chunks": pieces, "first_chunk_ms": round(1000 * first_s),
                 "latency_ms": round(1000 * stream_s)})
    return rows


def served_accuracy(base: str, task: str, field: str, records: Sequence[dict], label: str = "label",
                    progress: bool = True) -> dict:
    """Held-out accuracy of `task` as served: each record's `field` sent to POST /v1/generate (CHUNK inputs a
    request, greedy), the answer compared with its `label` by normalized exact match (as `promptray infer`).
    {"n_test", "tuned" (0-1), "versions" (the versions that answered), "seconds"}."""
    hits, versions, t0 = 0, set(), time.perf_counter()
    with tqdm(total=len(records), desc=f"{task} over HTTP", unit="example", disable=not progress) as bar:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            body = {"inputs": [{"taskname": task, "fields": {field: r[field]}} for r in chunk], **GREEDY}
            answer, _ = call(f"{base}/v1/generate", body)
            for r, c in zip(chunk, answer["completions"]):
                hits += bool(exact_match(c["text"], r[label]))
                versions.add(c["version"])
            bar.update(len(chunk))
    return {"n_test": len(records), "tuned": hits / max(1, len(records)), "versions": sorted(versions),
            "seconds": round(time.perf_counter() - t0, 1)}
