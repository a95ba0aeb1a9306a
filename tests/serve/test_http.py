"""The Serve app over real HTTP: every endpoint, mixed-task batches equal offline greedy generation, prefix cache
on/off, versions published while serving, every error case, auth."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import load_inference_engine, predict, prepare
from promptray.platform.table.table import PromptTable

from serve_helpers import API_KEY, make_prompt, wait_ready

pytestmark = pytest.mark.ray
AUTH = {"Authorization": f"Bearer {API_KEY}"}
N = 6  # tokens to generate
INPUTS = [
    {"taskname": "sent", "fields": {"text": "A wonderful, moving film."}},
    {"taskname": "qa", "fields": {"context": "The station is north.", "question": "Where is the station?"}},
    {"taskname": "tr", "fields": {"src": "good morning"}},
    {"taskname": "sent", "fields": {"text": "Dull and far too long, with a plot that goes nowhere at all."}},
    {"taskname": "tr", "fields": {"src": "x"}},
    {"taskname": "qa", "fields": {"context": "Bob is tall.", "question": "Who?"}},
    {"taskname": "tr", "fields": {"src": "the cat sat on the mat and looked at the moon"}},
    {"taskname": "sent", "fields": {"text": "Fine."}},
    {"taskname": "qa", "fields": {"context": "-", "question": "Why is the sky blue today, again?"}},
]


def offline(table_uri: str, model: str, inputs: list[dict], tasks=None) -> tuple[list[str], list[int]]:
    """Greedy texts and prompt lengths of platform.generation.inference (no Serve, no prefix cache)."""
    engine = load_inference_engine(table_uri, model, tasks=tasks)
    examples = prepare(engine, [{"taskname": x["taskname"], **x["fields"]} for x in inputs], N)
    return predict(engine, examples, GenerationParams(max_new_tokens=N)), [len(e) for e in examples]


def post(base: str, path: str, body, headers=AUTH, **kw) -> requests.Response:
    return requests.post(f"{base}{path}", json=body, headers=headers, timeout=60, **kw)


def sse(response: requests.Response) -> list:
    lines = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_healthz_and_tasks(server):
    health = requests.get(f"{server}/healthz", timeout=30).json()  # no key needed
    assert health["status"] == "ok" and health["precision"] == "fp32" and health["prefix_cache"] is True
    tasks = {t["name"]: t for t in requests.get(f"{server}/v1/tasks", headers=AUTH, timeout=30).json()}
    assert {"sent", "qa", "tr"} <= set(tasks)
    assert tasks["qa"]["virtual_tokens"] == 8 and tasks["tr"]["virtual_tokens"] == 15
    assert tasks["qa"]["input_fields"] == ["context", "question"] and tasks["qa"]["fields"][-1] == "answer"
    assert tasks["sent"]["version"].startswith("v000001-")
    assert requests.get(f"{server}/docs", timeout=30).status_code == 200
    assert "/v1/generate" in requests.get(f"{server}/openapi.json", timeout=30).json()["paths"]


def test_concurrent_mixed_tasks_equal_offline_greedy_with_and_without_prefix_cache(server, table_uri, tiny_gpt2_path):
    expected, lengths = offline(table_uri, str(tiny_gpt2_path), INPUTS, tasks=["sent", "qa", "tr"])
    assert len(set(expected)) > 3  # tasks and inputs matter

    def one(args):
        prefix, x = args
        return post(server, f"{prefix}/v1/generate", {**x, "max_tokens": N, "greedy": True}).json()

    jobs = [(p, x) for p in ("", "/plain") for x in INPUTS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    for prefix_i, prefix in enumerate(("", "/plain")):
        got = answers[prefix_i * len(INPUTS):(prefix_i + 1) * len(INPUTS)]
        assert [a["completions"][0]["text"] for a in got] == expected, prefix
        assert [a["usage"]["prompt_tokens"] for a in got] == lengths
        assert all(a["completions"][0]["version"].startswith("v000001-") for a in got)
    for prefix in ("", "/plain"):
        stats = requests.get(f"{server}{prefix}/healthz", timeout=30).json()["batches"]
        assert stats["mixed_task_batches"] >= 1 and stats["max_rows"] >= 3  # tasks shared forward passes

    # the list form: one request, several tasks, same answers
    many = post(server, "/v1/generate", {"inputs": INPUTS[:4], "max_tokens": N, "temperature": 0}).json()
    assert [c["text"] for c in many["completions"]] == expected[:4]
    assert [c["index"] for c in many["completions"]] == [0, 1, 2, 3]
    assert many["usage"]["prompt_tokens"] == sum(lengths[:4])


def test_streaming_and_openai_completions(server):
    body = {**INPUTS[0], "max_tokens": N, "greedy": True}
    whole = post(server, "/v1/generate", body).json()["completions"][0]
    events = sse(post(server, "/v1/generate", {**body, "stream": True}))
    assert "".join(e["text"] for e in events) == whole["text"]
    assert events[-1]["finish_reason"] == whole["finish_reason"] and all(e["index"] == 0 for e in events)

    req = {"model": "sent", "prompt": INPUTS[0]["fields"]["text"], "max_tokens": N, "temperature": 0, "user": "u"}
    out = post(server, "/v1/completions", req).json()
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == whole["text"]
    assert out["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    chunks = sse(post(server, "/v1/completions", {**req, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    # several input fields: prompt is a JSON object of them
    qa = {"model": "qa", "prompt": json.dumps(INPUTS[1]["fields"]), "max_tokens": N, "temperature": 0}
    qa_gen = post(server, "/v1/generate", {**INPUTS[1], "max_tokens": N, "greedy": True}).json()
    assert post(server, "/v1/completions", qa).json()["choices"][0]["text"] == qa_gen["completions"][0]["text"]
    as_object = post(server, "/v1/completions", {**qa, "prompt": INPUTS[1]["fields"]}).json()  # issue 13, F9
    assert as_object["choices"][0]["text"] == qa_gen["completions"][0]["text"]


def test_max_tokens_stop_strings_and_seeded_sampling(server):
    base = {**INPUTS[2], "greedy": True}
    full = post(server, "/v1/generate", {**base, "max_tokens": N}).json()["completions"][0]
    three = post(server, "/v1/generate", {**base, "max_tokens": 3}).json()["completions"][0]
    assert three["usage"]["completion_tokens"] == 3 and three["finish_reason"] == "length"
    assert full["text"].startswith(three["text"])
    stop = full["text"][len(full["text"]) // 2:][:3]
    assert stop.strip()
    cut = post(server, "/v1/generate", {**base, "max_tokens": N, "stop": [stop]}).json()["completions"][0]
    assert cut["text"] == full["text"][:full["text"].find(stop)] and cut["finish_reason"] == "stop"

    sample = {**INPUTS[0], "max_tokens": N, "temperature": 1.0, "top_k": 50, "top_p": 0.9}
    a = post(server, "/v1/generate", {**sample, "seed": 7}).json()["completions"][0]["text"]
    b = post(server, "/v1/generate", {**sample, "seed": 7}).json()["completions"][0]["text"]
    c = post(server, "/v1/generate", {**sample, "seed": 8}).json()["completions"][0]["text"]
    assert a == b and a != c


def test_usage_with_stop_strings_logprobs_and_echo(server):
    """completion_tokens counts every generated token, the one completing a stop string included (issue 13:
    it was 0 for `"stop": "wear"`); `logprobs` and `echo` in OpenAI's legacy completions shape."""
    base = {**INPUTS[2], "greedy": True, "max_tokens": N}
    full = post(server, "/v1/generate", {**base, "logprobs": 0}).json()["completions"][0]
    tokens = full["logprobs"]["tokens"]
    assert "".join(tokens) == full["text"] and len(tokens) == full["usage"]["completion_tokens"] == N
    # a stop string first completed by token j + 1: the last character before it and its text
    j, stop = next((j, "".join(tokens[:j])[-1:] + tokens[j]) for j in range(2, N)
                   if tokens[j].strip() and "".join(tokens[:j])[-1:] + tokens[j] not in "".join(tokens[:j]))
    cut = post(server, "/v1/generate", {**base, "stop": stop}).json()
    assert cut["completions"][0]["text"] == full["text"][:full["text"].find(stop)]
    assert cut["usage"]["completion_tokens"] == j + 1 and cut["completions"][0]["finish_reason"] == "stop"

    req = {"model": "sent", "prompt": INPUTS[0]["fields"]["text"], "max_tokens": 4, "temperature": 0}
    plain = post(server, "/v1/completions", req).json()["choices"][0]
    out = post(server, "/v1/completions", {**req, "logprobs": 2, "echo": True}).json()["choices"][0]
    prompt = f" Review: {INPUTS[0]['fields']['text']} Sentiment:"  # the template, virtual tokens left out
    assert out["text"] == prompt + plain["text"]
    lp = out["logprobs"]
    assert "".join(lp["tokens"]) == out["text"] and len(lp["tokens"]) == len(lp["text_offset"])
    assert all(out["text"][o:].startswith(t) for o, t in zip(lp["text_offset"], lp["tokens"]))
    assert all(x is not None and x < 0 for x in lp["token_logprobs"])  # virtual tokens first: all have context
    assert all(top[t] == x and len(top) <= 3 for t, x, top in zip(lp["tokens"], lp["token_logprobs"],
                                                                   lp["top_logprobs"]))
    echo = post(server, "/v1/completions", {**req, "echo": True}).json()["choices"][0]
    assert echo["text"] == out["text"] and echo["logprobs"] is None
    chunks = sse(post(server, "/v1/completions", {**req, "echo": True, "stream": True}))
    assert chunks[0]["choices"][0]["text"] == prompt
    assert "".join(c["choices"][0]["text"] for c in chunks) == echo["text"]


def test_task_published_while_serving_is_served_without_restart(server, table_uri, tiny_gpt2_path,
                                                                 model_fingerprint):
    fp, hidden = model_fingerprint
    spec = {"prompt_template": "<|VIRTUAL_PROMPT_0|> Fresh: {text} ->", "splits": [5], "answer_field": None}
    table = PromptTable(table_uri)
    v1 = table.publish([make_prompt("fresh", fp, hidden, seed=40, spec=spec)])["fresh"]
    x = {"taskname": "fresh", "fields": {"text": "hello there"}, "max_tokens": N, "greedy": True}
    first = post(server, "/v1/generate", x).json()["completions"][0]  # unknown task: manifest re-read at once
    assert first["version"] == v1
    assert first["text"] == offline(table_uri, str(tiny_gpt2_path), [x], tasks=["fresh"])[0][0]

    spec2 = {"prompt_template": "<|VIRTUAL_PROMPT_0|> New: {text} =>", "splits": [9], "answer_field": None}
    v2 = table.publish([make_prompt("fresh", fp, hidden, seed=41, spec=spec2)])["fresh"]
    names = {t["name"]: t["version"] for t in
             requests.get(f"{server}/v1/tasks", params={"refresh": "true"}, headers=AUTH, timeout=30).json()}
    assert names["fresh"] == v2
    second = post(server, "/v1/generate", x).json()["completions"][0]
    assert second["version"] == v2 and second["usage"]["prompt_tokens"] != first["usage"]["prompt_tokens"]
    assert second["text"] == offline(table_uri, str(tiny_gpt2_path), [x], tasks=["fresh"])[0][0]
    pinned = post(server, "/v1/generate", {**x, "version": v1}).json()["completions"][0]  # a pinned old version
    assert (pinned["version"], pinned["text"]) == (v1, first["text"])


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/generate", {"taskname": "nope", "fields": {}}, 404, "known tasks: ['fresh', 'qa', 'sent', 'tr']"),
    ("/v1/generate", {"taskname": "qa", "fields": {"context": "c"}}, 422, "missing field 'question'"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t", "colour": "r"}}, 422, "unknown field 'colour'"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "version": "v9"}, 404, "no version 'v9'"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "word " * 240}}, 422, "positions"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "temperature": -1}, 422, "temperature"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "top_p": 0}, 422, "top_p"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "max_tokens": 0}, 422, "max_tokens"),
    ("/v1/generate", {"fields": {"text": "t"}}, 422, "either taskname"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "logprobs": 6}, 422, "logprobs"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "logprobs": 1, "stream": True}, 422,
     "logprobs is not supported with stream"),
    ("/v1/generate", {"taskname": "sent", "fields": {"text": "t"}, "min_tokens": 9, "max_tokens": 4}, 422,
     "min_tokens (9) must not exceed max_tokens (4)"),
    ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "unknown task 'nope'"),
    ("/v1/completions", {"model": "qa", "prompt": "not json"}, 422, "JSON object"),
])
def test_bad_input_is_a_4xx_with_a_message(server, path, body, status, needle):
    if "fresh" in needle:  # the known-task list depends on whether the publish test ran first
        tasks = [t["name"] for t in requests.get(f"{server}/v1/tasks", headers=AUTH, timeout=30).json()]
        needle = f"known tasks: {tasks}"
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_too_long_input_reports_token_counts_and_body_limit_is_413(server):
    r = post(server, "/v1/generate", {"taskname": "sent", "fields": {"text": "word " * 240}, "max_tokens": 8})
    detail = r.json()["error"]
    assert r.status_code == 422 and detail["prompt_tokens"] > 240 and detail["max_positions"] == 256
    assert detail["code"] == "context_length_exceeded" and detail["param"] == "fields"
    batch = post(server, "/v1/generate", {"inputs": [{"taskname": "sent", "fields": {"text": "ok"}},
                                                     {"taskname": "sent", "fields": {"text": "word " * 240}}]})
    assert batch.status_code == 422 and batch.json()["error"]["param"] == "inputs.1.fields"
    big = post(server, "/v1/generate", {"taskname": "sent", "fields": {"text": "x" * 5000}})
    assert big.status_code == 413 and "limit is 4096" in big.text


def test_api_key_auth(server):
    body = {**INPUTS[0], "max_tokens": 2}
    assert post(server, "/v1/generate", body, headers={}).status_code == 401
    wrong = post(server, "/v1/generate", body, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and "API key" in wrong.text and API_KEY not in wrong.text
    assert requests.get(f"{server}/v1/tasks", timeout=30).status_code == 401
    assert post(server, "/v1/generate", body).status_code == 200
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200
    assert post(server, "/plain/v1/generate", body, headers={}).status_code == 200  # auth off on that app


def _chunks(body: bytes, size: int = 1000):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_chunked_body_over_the_limit_is_413_and_under_it_is_served(server):
    headers = {**AUTH, "Content-Type": "application/json"}
    big = json.dumps({"taskname": "sent", "fields": {"text": "x" * 6000}, "max_tokens": 2}).encode()
    r = requests.post(f"{server}/v1/generate", data=_chunks(big), headers=headers, timeout=60)
    assert r.request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.request.headers
    assert r.status_code == 413 and "limit is 4096" in r.text, r.text
    small = json.dumps({**INPUTS[0], "max_tokens": N, "greedy": True}).encode()
    ok = requests.post(f"{server}/v1/generate", data=_chunks(small, 16), headers=headers, timeout=60)
    assert ok.status_code == 200, ok.text
    whole = post(server, "/v1/generate", {**INPUTS[0], "max_tokens": N, "greedy": True}).json()
    assert ok.json()["completions"][0]["text"] == whole["completions"][0]["text"]


@pytest.fixture(scope="module")
def tight(server, table_uri, tiny_gpt2_path):
    """App "tight" at /tight: one running row, one waiting request."""
    from ray import serve

    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    settings = ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32", max_batch_size=1,
                              max_queue=1, api_keys_env=None, threads=1)
    serve.run(build_app(settings, ray_actor_options={"num_cpus": 0}), name="tight", route_prefix="/tight",
              blocking=False)
    wait_ready(f"{server}/tight/healthz")
    yield f"{server}/tight"
    serve.delete("tight")


def test_beyond_the_queue_a_503_with_retry_after_and_metrics_count_it(tight):
    body = {**INPUTS[2], "max_tokens": 200, "min_tokens": 200, "greedy": True}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(tight, "/v1/generate", body), range(6)))
    busy = [a for a in answers if a.status_code == 503]
    ok = [a for a in answers if a.status_code == 200]
    assert busy and ok and len(busy) + len(ok) == 6
    error = busy[0].json()["error"]
    assert error["code"] == "server_overloaded" and error["type"] == "server_error"
    assert int(busy[0].headers["Retry-After"]) == error["retry_after_s"] >= 1
    assert "its queue holds 1" in error["message"]
    assert len({a.json()["completions"][0]["text"] for a in ok}) == 1  # the same greedy answer each time
    metrics = requests.get(f"{tight}/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if line and not line.startswith("#"))
    assert float(lines['promptray_requests_total{outcome="rejected"}']) == len(busy)
    assert float(lines['promptray_requests_total{outcome="finished"}']) == len(ok)
    assert float(lines["promptray_generated_tokens_total"]) == 200 * len(ok)
    assert float(lines["promptray_queue_depth"]) == 0 and float(lines["promptray_kv_budget_tokens"]) == 65536
    health = requests.get(f"{tight}/healthz", timeout=30).json()["scheduler"]
    assert health["requests"]["rejected"] == len(busy) and health["tokens_generated"] == 200 * len(ok)


def _counters(base: str) -> dict[str, float]:
    text = requests.get(f"{base}/metrics", timeout=30).text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


def test_a_client_that_disconnects_mid_stream_cancels_its_row(tight):
    import time

    before = _counters(tight)
    body = {**INPUTS[2], "max_tokens": 200, "min_tokens": 200, "greedy": True, "stream": True}
    with requests.post(f"{tight}/v1/generate", json=body, stream=True, timeout=60) as r:
        first = next(line for line in r.iter_lines() if line.startswith(b"data: "))
    assert json.loads(first[6:])["finish_reason"] is None  # the connection closes mid-answer
    key = 'promptray_requests_total{outcome="cancelled"}'
    deadline = time.monotonic() + 30
    while _counters(tight)[key] == before[key] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _counters(tight)
    assert after[key] == before[key] + 1 and after["promptray_running_rows"] == 0
    assert after["promptray_generated_tokens_total"] - before["promptray_generated_tokens_total"] < 200
