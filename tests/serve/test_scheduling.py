"""A replica's scheduling without Ray: the runner streams each row's events from its thread with the texts of
a static batch, a listener that leaves cancels its row, the engine's prompt cap and KV budget are 422s naming
them, a full queue is a 503 with Retry-After, and /metrics and /healthz count what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from promptray.serve.app import deployment_options
from promptray.serve.engine import ServeEngine
from promptray.serve.errors import InputTooLongError, ServerBusyError
from promptray.serve.http import error_response
from promptray.serve.metrics import ReplicaMetrics
from promptray.serve.runner import SchedulerRunner
from promptray.serve.schemas import SamplingParams, ServerSettings

from serve_helpers import INPUTS_FOR_UNITS, run


def engine_of(table_uri, model, **settings) -> ServeEngine:
    return ServeEngine(ServerSettings(table=table_uri, model=str(model), precision="fp32", **settings))


async def answer(runner: SchedulerRunner, engine: ServeEngine, x: dict, params, delay: float) -> tuple[str, int]:
    """(text, generated tokens) of one input submitted after `delay` seconds."""
    await asyncio.sleep(delay)
    p = engine.encode(x["taskname"], x["fields"], None, params)
    text, generated = "", 0
    async for e in runner.events(runner.submit([(p.example, engine.row(p))])[0]):
        text, generated = text + e.text, e.generated
    return text, generated


def test_staggered_requests_get_the_static_batch_texts_and_metrics_count_them(table_uri, tiny_gpt2_path):
    engine = engine_of(table_uri, tiny_gpt2_path, max_batch_size=2, prefill_chunk_tokens=8)
    params = SamplingParams(max_tokens=6, greedy=True)
    expected = run(engine, INPUTS_FOR_UNITS, params)  # one static batch (ServeEngine.stream)
    scheduler = engine.scheduler()
    runner, metrics = SchedulerRunner(scheduler), ReplicaMetrics(scheduler, engine.prefixes)
    hits = engine.prefixes.hits

    async def main():
        return await asyncio.gather(*[answer(runner, engine, x, params, 0.03 * i)
                                      for i, x in enumerate(INPUTS_FOR_UNITS * 2)])

    try:
        got = asyncio.run(main())
    finally:
        runner.close()
    assert [t for t, _ in got] == expected * 2 and len(set(expected)) == 3
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    value = {name: f.samples[0].value for name, f in families.items() if f.samples}
    assert value["promptray_generated_tokens"] == sum(n for _, n in got)
    assert value["promptray_queue_depth"] == 0 and value["promptray_running_rows"] == 0
    assert value["promptray_kv_budget_tokens"] == 65536
    assert value["promptray_prefix_cache_hits"] == hits + 6  # every task has a cached prompt start
    ttft = {s.labels.get("le"): s.value for s in families["promptray_time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket")}
    assert ttft["+Inf"] == 6 and families["promptray_inter_token_latency_seconds"].samples
    outcomes = {s.labels["outcome"]: s.value for s in families["promptray_requests"].samples}
    assert outcomes == {"finished": 6, "cancelled": 0, "failed": 0, "rejected": 0}
    summary = metrics.summary()
    assert summary["tokens_generated"] == value["promptray_generated_tokens"] and summary["ttft_count"] == 6
    # arrivals are timed by the clock, so how many overlap depends on the machine's load: only the cap is certain
    # (tests/platform/generation/test_scheduler.py checks overlapping rows step by step)
    assert 1 <= summary["batches"]["max_rows"] <= 2 and summary["requests"]["finished"] == 6


def test_a_listener_that_leaves_cancels_its_row(table_uri, tiny_gpt2_path):
    engine = engine_of(table_uri, tiny_gpt2_path)
    scheduler = engine.scheduler()
    runner = SchedulerRunner(scheduler)
    x = INPUTS_FOR_UNITS[2]
    params = SamplingParams(max_tokens=200, min_tokens=200, greedy=True)  # no early EOS

    async def main():
        p = engine.encode(x["taskname"], x["fields"], None, params)
        events = runner.events(runner.submit([(p.example, engine.row(p))])[0])
        first = [await events.__anext__() for _ in range(2)]
        await events.aclose()  # what a client disconnect does to the handler
        for _ in range(200):
            if scheduler.idle:
                break
            await asyncio.sleep(0.01)
        return first

    try:
        first = asyncio.run(main())
    finally:
        runner.close()
    assert all(e.finish_reason is None for e in first)
    assert scheduler.idle and scheduler.stats.requests == {"finished": 0, "cancelled": 1, "failed": 0,
                                                           "rejected": 0}
    assert scheduler.stats.tokens < 200 and runner.open_requests == 0


def test_prompt_cap_and_kv_budget_are_422s_naming_the_limit(table_uri, tiny_gpt2_path):
    engine = engine_of(table_uri, tiny_gpt2_path, max_prompt_tokens=20, kv_budget_tokens=40)
    ok = engine.encode("sent", {"text": "hi"}, None, SamplingParams(max_tokens=4))
    with pytest.raises(InputTooLongError) as long:
        engine.encode("sent", {"text": "word " * 30}, None, SamplingParams(max_tokens=4))
    assert long.value.status == 422 and long.value.detail["max_prompt_tokens"] == 20
    assert "more than 20 (this server's max_prompt_tokens 20)" in long.value.message
    assert long.value.param == "fields" and "no truncate_field" in long.value.message
    over = 40 - ok.prompt_tokens + 1
    with pytest.raises(InputTooLongError) as budget:
        engine.encode("sent", {"text": "hi"}, None, SamplingParams(max_tokens=over))
    assert f"(this server's kv_budget_tokens 40 less max_tokens {over})" in budget.value.message
    assert budget.value.message.endswith("shorten the input or lower max_tokens")
    engine.encode("sent", {"text": "hi"}, None, SamplingParams(max_tokens=over - 1))  # exactly at the budget


def test_a_truncatable_input_is_cut_to_the_prompt_cap_whatever_max_tokens(table_uri, tiny_gpt2_path, monkeypatch):
    """Found by a new user: a long input was refused with max_tokens 3 but cut (and served) with max_tokens
    4096: truncation fitted the model's positions only, never max_prompt_tokens or the KV budget."""
    engine = engine_of(table_uri, tiny_gpt2_path, max_prompt_tokens=20, kv_budget_tokens=40)
    resolve = engine.prompts.resolve

    def truncatable(taskname, version):
        task = resolve(taskname, version)
        return dataclasses.replace(task, template=task.template.model_copy(update={"truncate_field": "text"}))

    monkeypatch.setattr(engine.prompts, "resolve", truncatable)
    for max_tokens, most in ((2, 20), (30, 10)):  # max_prompt_tokens binds, then the KV budget
        p = engine.encode("sent", {"text": "word " * 30}, None, SamplingParams(max_tokens=max_tokens))
        assert p.truncated and p.prompt_tokens == most

def test_a_full_queue_is_a_503_with_retry_after_in_openais_shape():
    r = error_response(ServerBusyError("the server is busy", retry_after_s=3))
    body = json.loads(r.body)["error"]
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert body == {"message": "the server is busy", "type": "server_error", "param": None,
                    "code": "server_overloaded", "retry_after_s": 3}


def test_deployment_options_match_the_schedulers_capacity():
    s = ServerSettings(table="t", max_batch_size=8, max_queue=24, threads=3)
    assert deployment_options(s) == {"max_ongoing_requests": 40, "num_replicas": 1,
                                     "ray_actor_options": {"num_cpus": 3}}
    auto = deployment_options(s, autoscaling_config={"min_replicas": 1, "max_replicas": 4})
    assert auto["autoscaling_config"] == {"target_ongoing_requests": 8, "min_replicas": 1, "max_replicas": 4}
    assert "num_replicas" not in auto
    assert deployment_options(ServerSettings(table="t"))["ray_actor_options"] == {"num_cpus": 1}  # threads unset


def test_a_request_of_several_inputs_is_queued_whole_on_an_idle_server(table_uri, tiny_gpt2_path):
    """Found by a new user: with max_queue 3 a request of 4 inputs got a 503 on an idle server, forever."""
    from promptray.platform.generation.scheduler import QueueFullError, RequestTooLargeError

    engine = engine_of(table_uri, tiny_gpt2_path, max_batch_size=2, max_queue=3)
    p = engine.encode("sent", {"text": "hi"}, None, SamplingParams(max_tokens=3))

    async def go():
        runner = SchedulerRunner(engine.scheduler())
        runner.scheduler.step = lambda: []  # nothing runs: the queue only fills
        try:
            accepted = runner.submit([(p.example, engine.row(p)) for _ in range(5)])  # 2 rows free + 3 waiting
            with pytest.raises(QueueFullError, match="its queue holds 3"):
                runner.submit([(p.example, engine.row(p))])
            with pytest.raises(RequestTooLargeError, match="at most 5 inputs per request"):
                runner.submit([(p.example, engine.row(p)) for _ in range(6)])
            return len(accepted), runner.open_requests
        finally:
            runner.close()

    assert asyncio.run(go()) == (5, 5)
