"""The OpenAI routes over real HTTP with the official `openai` client, and a server that tells the truth: our
messages in every error, a cut input flagged, offline docs, a table of another base model refused."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from promptray.platform.table.table import PromptTable

from serve_helpers import API_KEY, TEMPLATES, free_port, make_prompt

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.ray
AUTH = {"Authorization": f"Bearer {API_KEY}"}
N = 6
TEXT = "A wonderful, moving film."


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def generate(server: str, body: dict) -> dict:
    r = requests.post(f"{server}/v1/generate", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["completions"][0]


def test_completions_and_models_with_the_openai_client(server, client, table_uri):
    got = client.completions.create(model="sent", prompt=TEXT, max_tokens=N, temperature=0, user="alice")
    want = generate(server, {"taskname": "sent", "fields": {"text": TEXT}, "max_tokens": N, "greedy": True})
    assert got.choices[0].text == want["text"] and got.choices[0].finish_reason == want["finish_reason"]
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"] and got.model == "sent"
    assert got.choices[0].model_extra["truncated"] is False
    versions = {i.taskname: i.version for i in PromptTable(table_uri).describe()}
    models = {m.id: m for m in client.models.list()}
    assert {"sent", "qa", "tr"} <= set(models) and all(m.owned_by == "promptray" for m in models.values())
    assert models["tr"].model_extra["version"] == versions["tr"]
    one = client.models.retrieve("qa")
    assert (one.id, one.object, one.created) == ("qa", "model", models["qa"].created)


@pytest.mark.parametrize("kwargs,error,needle", [
    ({"model": "nope"}, "NotFoundError", "unknown task 'nope'; known tasks: ["),
    ({"n": 2}, "UnprocessableEntityError", "n: n=2 is not supported by this server; omit it or send 1"),
    ({"best_of": 2}, "UnprocessableEntityError", "best_of=2 is not supported"),
    ({"suffix": "!"}, "UnprocessableEntityError", "suffix='!' is not supported"),
    ({"presence_penalty": 0.5}, "UnprocessableEntityError", "presence_penalty=0.5 is not supported"),
    ({"frequency_penalty": 0.5}, "UnprocessableEntityError", "frequency_penalty=0.5 is not supported"),
    ({"logit_bias": {"50256": -100}}, "UnprocessableEntityError", "logit_bias={'50256': -100.0} is not supported"),
    ({"extra_body": {"colour": "red"}}, "UnprocessableEntityError", "unknown parameter 'colour'"),
])
def test_openai_client_shows_our_message(client, kwargs, error, needle):
    with pytest.raises(getattr(openai, error)) as err:
        client.completions.create(**{"model": "sent", "prompt": TEXT, "max_tokens": 2, **kwargs})
    assert needle in err.value.message and needle in str(err.value), str(err.value)
    assert err.value.body["message"] == err.value.message.removeprefix(f"Error code: {err.value.status_code} - ")


def test_wrong_key_and_unknown_model_id_with_the_openai_client(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert "missing or invalid API key" in str(err.value) and API_KEY not in str(err.value)
    good = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        good.models.retrieve("nope")
    assert err.value.code == "model_not_found" and "unknown task 'nope'" in str(err.value)


def test_readme_curl_without_content_type_and_a_body_that_is_not_json(server):
    body = json.dumps({"model": "sent", "prompt": TEXT, "max_tokens": 2})
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):  # curl -d sends the latter
        r = requests.post(f"{server}/plain/v1/completions", data=body, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text
    r = requests.post(f"{server}/plain/v1/completions", data="model=sent&prompt=hi", timeout=60)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "invalid_json" and "not valid JSON" in err["message"]


def test_every_error_has_the_openai_shape(server):
    cases = [requests.get(f"{server}/v1/tasks", timeout=30),  # 401
             requests.get(f"{server}/v1/nowhere", headers=AUTH, timeout=30),  # 404 route
             requests.post(f"{server}/v1/generate", json={"taskname": "sent", "fields": {"text": "x" * 5000}},
                           headers=AUTH, timeout=30),  # 413
             requests.post(f"{server}/v1/generate", json={"taskname": "sent", "max_tokens": 0}, headers=AUTH,
                           timeout=30)]  # 422
    assert [r.status_code for r in cases] == [401, 404, 413, 422]
    for r in cases:
        assert set(r.json()) == {"error"} and {"message", "type", "param", "code"} <= set(r.json()["error"])
    assert cases[3].json()["error"]["param"] == "max_tokens"


def test_a_cut_input_says_so(server, table_uri, model_fingerprint):
    fp, hidden = model_fingerprint
    prompt = make_prompt("cut", fp, hidden, 5, TEMPLATES["sent"])
    PromptTable(table_uri).publish([dataclasses.replace(prompt, template={**prompt.template,
                                                                           "truncate_field": "text"})])
    long = {"taskname": "cut", "fields": {"text": "word " * 400}, "max_tokens": 8, "greedy": True}
    got = generate(server, long)
    assert got["truncated"] is True and got["usage"]["prompt_tokens"] == 256 - 8
    assert generate(server, {**long, "fields": {"text": "word"}})["truncated"] is False
    r = requests.post(f"{server}/v1/completions", json={"model": "cut", "prompt": "word " * 400, "max_tokens": 8},
                      headers=AUTH, timeout=60).json()
    assert r["choices"][0]["truncated"] is True and r["usage"]["prompt_tokens"] == 248
    stream = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0).completions.create(
        model="cut", prompt="word " * 400, max_tokens=3, stream=True)
    flags = [c.choices[0].model_extra["truncated"] for c in stream]
    assert flags and all(flags)
    events = requests.post(f"{server}/v1/generate", json={**long, "stream": True}, headers=AUTH, timeout=60).text
    events = [json.loads(x[6:]) for x in events.split("\n\n") if x.startswith("data: {")]
    assert events and all(e["truncated"] for e in events)


@pytest.mark.parametrize("prefix", ["", "/plain"])
def test_docs_load_only_local_assets(server, prefix):
    page = requests.get(f"{server}{prefix}/docs", timeout=30).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page) + re.findall(r"url: '([^']+)'", page)
    assert len(urls) == 4 and all(u.startswith(f"{prefix}/") for u in urls), urls  # css, icon, js, openapi
    for u in urls:
        r = requests.get(f"{server}{u}", timeout=30)
        assert r.status_code == 200 and len(r.content) > 1000, u


def _deploy(name: str, table: str, model: str):
    """A third app on the module's Serve instance; returns its handle once its replica is up."""
    from ray import serve

    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    settings = ServerSettings(table=table, model=model, precision="fp32", api_keys_env=None)
    return serve.run(build_app(settings, ray_actor_options={"num_cpus": 0}), name=name, route_prefix=f"/{name}",
                     blocking=False)


def _wait_routed(url: str, timeout: float = 120) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(url, timeout=30)
        if "error" in r.text and r.headers.get("content-type") == "application/json":
            return r
        time.sleep(0.5)
    raise TimeoutError(url)


def test_a_table_of_another_base_model_is_a_503_with_the_reason_never_404(server, tmp_path, tiny_gpt2_path,
                                                                           model_fingerprint):
    fp, hidden = model_fingerprint
    other = dataclasses.replace(fp, name="other-model", embedding_sha256="0" * 64)
    table = str(tmp_path / "other")
    PromptTable(table).publish([make_prompt("sent", other, hidden, 0)])
    handle = _deploy("wrong", table, str(tiny_gpt2_path))
    problem = handle.startup_problem.remote().result(timeout_s=120)
    assert problem.startswith(f"none of the 1 task(s) of prompt table {table!r} can be served on base model")
    health = _wait_routed(f"{server}/wrong/healthz")
    assert health.status_code == 503 and health.json()["error"]["message"] == f"this server cannot serve: {problem}"
    client = openai.OpenAI(base_url=f"{server}/wrong/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model="sent", prompt=TEXT, max_tokens=2)
    assert err.value.status_code == 503 and "trained on base model 'other-model'" in str(err.value)


def test_a_task_of_another_base_model_is_left_out_and_a_request_for_it_is_409(server, tmp_path, tiny_gpt2_path,
                                                                               model_fingerprint):
    fp, hidden = model_fingerprint
    other = dataclasses.replace(fp, name="other-model", embedding_sha256="0" * 64)
    table = PromptTable(str(tmp_path / "mixed"))
    table.publish([make_prompt("sent", fp, hidden, 0)])
    assert _deploy("mixed", table.uri, str(tiny_gpt2_path)).startup_problem.remote().result(timeout_s=120) is None
    table.publish([make_prompt("alien", other, hidden, 1, TEMPLATES["sent"])])  # published later
    client = openai.OpenAI(base_url=f"{server}/mixed/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.ConflictError) as err:
        client.completions.create(model="alien", prompt=TEXT, max_tokens=2)
    assert err.value.code == "base_model_mismatch"
    assert "task 'alien' version 'v000001-" in str(err.value) and "cannot be served by this server" in str(err.value)
    assert [m.id for m in client.models.list()] == ["sent"]
    health = requests.get(f"{server}/mixed/healthz", timeout=30).json()
    assert health["status"] == "ok" and list(health["unservable_tasks"]) == ["alien"]
    tasks = requests.get(f"{server}/mixed/v1/tasks", timeout=30).json()
    assert [t["name"] for t in tasks] == ["sent"]


@pytest.mark.slow
def test_cli_refuses_to_serve_a_table_of_another_base_model(tmp_path, tiny_gpt2_path, model_fingerprint):
    fp, hidden = model_fingerprint
    other = dataclasses.replace(fp, name="other-model", embedding_sha256="0" * 64)
    table = str(tmp_path / "other")
    PromptTable(table).publish([make_prompt("sent", other, hidden, 0)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-m", "promptray.jobs.cli", "serve", "--table", table, "--model",
                          str(tiny_gpt2_path), "--port", str(free_port()), "--accelerator", "cpu"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"promptray serve: error: none of the 1 task(s) of prompt table {table!r}")
    assert "trained on base model 'other-model'" in last
