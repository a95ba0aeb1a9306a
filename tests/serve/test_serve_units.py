"""The serving pieces without Ray: the byte-bounded prompt LRU, the engine's batches, API keys, configs, CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from promptray.jobs.cli import build_parser
from promptray.platform.generation.decode import GenerationParams
from promptray.serve.auth import ApiKeys, BodyLimit
from promptray.serve.engine import ServeEngine
from promptray.serve.schemas import SamplingParams, ServerSettings

from serve_helpers import INPUTS_FOR_UNITS, run

ROOT = Path(__file__).resolve().parents[2]


def test_prompt_lru_is_bounded_in_bytes_and_reloads_evicted_tasks(table_uri, tiny_gpt2_path):
    params = SamplingParams(max_tokens=5, greedy=True)
    roomy = ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32"))
    expected = run(roomy, INPUTS_FOR_UNITS, params)
    sizes = {k.split("@")[0]: roomy.prompts._loaded[k].nbytes for k in roomy.prompts.loaded}
    assert set(sizes) == {"sent", "qa", "tr"} and sizes["tr"] > sizes["sent"]  # prefix KV counted too

    bound = max(sizes.values()) + min(sizes.values())  # room for two small ones, never all three
    tight = ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32",
                                       prompt_cache_bytes=bound))
    for x in INPUTS_FOR_UNITS:  # one at a time: the LRU evicts as it goes
        assert run(tight, [x], params) == [expected[INPUTS_FOR_UNITS.index(x)]]
        assert tight.prompts.loaded_bytes <= bound and len(tight.bank.names) == len(tight.prompts.loaded)
    assert len(tight.prompts.loaded) < 3
    assert run(tight, INPUTS_FOR_UNITS, params) == expected  # a batch of all three: evicted ones come back


def test_api_keys_from_env_and_file_never_shown(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text("# comment\nfile-key\n\n")
    monkeypatch.setenv("MY_KEYS", "env-1, env-2")
    keys = ApiKeys.load("MY_KEYS", str(path))
    assert keys.enabled and "env-1" not in repr(keys) and "file-key" not in repr(keys)
    assert keys.valid("Bearer env-2") and keys.valid("bearer file-key")
    assert not keys.valid(None) and not keys.valid("Bearer nope") and not keys.valid("Basic env-1")
    assert not keys.valid("Bearer ") and not keys.valid("env-1")
    assert ApiKeys.load("UNSET_VAR_X", None).valid(None)  # no keys: auth off


def test_serve_config_and_rayservice_validate():
    cfg = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    svc = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayservice.yaml").read_text())
    assert svc["kind"] == "RayService" and svc["apiVersion"] == "ray.io/v1"
    for app in (cfg["applications"][0], yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]):
        settings = ServerSettings.model_validate(app["args"])
        dep = app["deployments"][0]
        assert app["import_path"] == "promptray.serve.app:app_builder" and dep["name"] == "PromptServer"
        assert dep["max_ongoing_requests"] >= settings.max_batch_size
        assert dep["autoscaling_config"]["max_replicas"] > dep["autoscaling_config"]["min_replicas"] >= 1


def test_settings_report_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        ServerSettings(table="t", max_batch_size=0, refresh_s=-1, precision="fp16")
    text = str(err.value)
    assert "max_batch_size" in text and "refresh_s" in text and "precision" in text


def test_cli_serve_arguments():
    args = build_parser().parse_args(["serve", "--table", "s3://b/t", "--model", "smollm2-135m", "--port", "9000",
                                      "--replicas", "2", "--api-keys-file", "/k"])
    assert (args.table, args.model, args.port, args.replicas, args.api_keys_file) == \
        ("s3://b/t", "smollm2-135m", 9000, 2, "/k")
    assert args.fn.__name__ == "cmd_serve"


def test_cli_serve_scheduling_flags_reach_the_settings():
    from promptray.jobs.cli import serve_settings
    from promptray.platform.errors import ConfigError

    args = build_parser().parse_args(["serve", "--table", "s3://b/t", "--batching", "static", "--threads", "3",
                                      "--max-queue", "5", "--kv-budget-tokens", "4096", "--max-prompt-tokens", "512",
                                      "--replicas", "2", "--max-replicas", "4"])
    s = serve_settings(args)
    assert (s.batching, s.threads, s.max_queue, s.kv_budget_tokens, s.max_prompt_tokens) == \
        ("static", 3, 5, 4096, 512)
    assert args.max_replicas == 4
    bad = build_parser().parse_args(["serve", "--table", "s3://b/t", "--replicas", "3", "--max-replicas", "2",
                                     "--max-queue", "0"])
    with pytest.raises(ConfigError) as err:
        serve_settings(bad)
    assert err.value.problems == ["--max-replicas 2: give at least --replicas (3)",
                                  "--max-queue 0: input should be greater than or equal to 1"]


def _call_body_limit(chunks, limit: int, headers=()) -> tuple[list[dict], int, list[bytes]]:
    """Run BodyLimit over a request whose body arrives as `chunks` (an iterator, maybe endless): (the messages
    it sent, how many chunks it read, the body the app behind it saw)."""
    chunks, read, seen, sent = iter(chunks), [0], [], []

    async def receive():
        read[0] += 1
        body = next(chunks, None)
        return {"type": "http.request", "body": body or b"", "more_body": body is not None}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # echoes the body it gets
        while True:
            m = await receive()
            seen.append(m["body"])
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(seen)})

    scope = {"type": "http", "method": "POST", "headers": list(headers),
             "app": SimpleNamespace(state=SimpleNamespace(max_body_bytes=limit))}
    asyncio.run(BodyLimit(app)(scope, receive, send))
    return sent, read[0], seen


def test_body_limit_stops_reading_an_endless_chunked_body_and_passes_small_ones_on():
    def endless():
        while True:
            yield b"x" * 100

    sent, read, seen = _call_body_limit(endless(), limit=1024)
    assert sent[0]["status"] == 413 and read == 11 and seen == []  # 11 chunks: the first past 1024 bytes
    body = json.loads(sent[1]["body"])
    body = body["error"]
    assert body["size"] == 1100 and not body["size_is_exact"] and "at least 1100 bytes" in body["message"]

    sent, read, seen = _call_body_limit([b"a" * 10] * 5, limit=1024)  # within the limit: the app gets it all
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"a" * 50

    sent, read, _ = _call_body_limit(endless(), limit=1024, headers=[(b"content-length", b"5000")])
    assert sent[0]["status"] == 413 and read == 0 and json.loads(sent[1]["body"])["error"]["size"] == 5000


def _train_with_bos(tmp_path, model_path) -> str:
    """A table with task "a" trained (2 steps) with model.data.add_bos=true."""
    from promptray.platform.config.schema import load_config
    from promptray.platform.train.trainer import train

    words = "apple river stone cloud green tiger music paper candle window garden silver".split()
    rows = [{"taskname": "a", "text": " ".join(words[i % 12:i % 12 + 3]), "label": "yes"} for i in range(16)]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = {"taskname": "a", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                "total_virtual_tokens": 3, "virtual_token_splits": [3], "answer_field": "label"}
    cfg = load_config({"name": "bos", "trainer": {"max_steps": 2, "val_check_interval": 2, "precision": 32},
                       "exp_manager": {"exp_dir": str(tmp_path / "runs")},
                       "model": {"language_model_path": str(model_path), "nemo_path": str(tmp_path / "table"),
                                 "new_tasks": ["a"], "task_templates": [template], "global_batch_size": 4,
                                 "micro_batch_size": 2, "optim": {"lr": 0.05},
                                 "data": {"train_ds": [str(data)], "validation_ds": [str(data)], "add_bos": True}}})
    return train(cfg, progress=False).table_uri


def test_task_trained_with_bos_is_served_with_bos_issue13(tmp_path, tiny_gpt2_path):
    """Issue 13 #3: serving answered as if no BOS had been used. Right: the with-BOS predictions of infer."""
    from promptray.platform.generation.inference import load_inference_engine, predict, prepare

    uri = _train_with_bos(tmp_path, tiny_gpt2_path)
    serve = ServeEngine(ServerSettings(table=uri, model=str(tiny_gpt2_path), precision="fp32"))
    words = ["green tiger", "paper candle", "silver river", "music window stone", "cloud apple", "garden"]
    items = [{"taskname": "a", "fields": {"text": w}} for w in words]
    params = SamplingParams(max_tokens=6, greedy=True)
    prepared = serve.encode("a", {"text": "green tiger"}, None, params)
    bos = serve.tokenizer.bos_token_id
    assert prepared.example.input_ids[0] == bos and prepared.example.virtual_ids[:4] == [-1, 0, 1, 2]
    prefix = serve.prefixes.get(prepared.task.key)  # the cached prompt start has the BOS too
    assert prefix.input_ids[0] == bos and prefix.virtual_ids[:4] == [-1, 0, 1, 2]

    engine = load_inference_engine(uri, str(tiny_gpt2_path))
    records = [{"taskname": "a", **x["fields"]} for x in items]
    gen = GenerationParams(max_new_tokens=6)
    with_bos = predict(engine, prepare(engine, records, 6, add_bos=True), gen)
    without_bos = predict(engine, prepare(engine, records, 6, add_bos=False), gen)
    assert with_bos != without_bos  # the BOS matters for this model, so the comparison below can fail
    assert run(serve, items, params) == with_bos


def _last_events(engine, prepared) -> list:
    texts, last = [""] * len(prepared), [None] * len(prepared)
    for events in engine.stream(prepared):
        for i, e in enumerate(events):
            if e is not None:
                texts[i] += e.text
                last[i] = e
    return list(zip(texts, last))


def test_usage_counts_every_generated_token_with_stop_strings(table_uri, tiny_gpt2_path):
    """Issue 13's example (`"stop": "wear"` gave completion_tokens 0; others were short by an amount that
    depended on the stop string's length): completion tokens are the tokens generated, up to and including
    the one that completes the stop string. Stop strings of several lengths, each its own row of one batch."""
    engine = ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32"))
    x = INPUTS_FOR_UNITS[2]
    whole = SamplingParams(max_tokens=12, greedy=True)
    [(full_text, last)] = _last_events(engine, [engine.encode(x["taskname"], x["fields"], None, whole)])
    steps = engine.stream([engine.encode(x["taskname"], x["fields"], None, whole)])
    full = [t for events in steps for e in events if e is not None for t in e.token_ids]
    assert last.generated == 12 == len(full) and engine.decode(full) == full_text
    stops = [full_text[3:4], full_text[5:8], full_text[6:12], full_text[-4:]]
    assert all(s.strip() for s in stops)
    prepared = [engine.encode(x["taskname"], x["fields"], None, SamplingParams(max_tokens=12, greedy=True, stop=[s]))
                for s in stops]
    for s, (text, last) in zip(stops, _last_events(engine, prepared)):
        completes = next(j for j in range(1, 13) if s in engine.decode(full[:j]))
        assert text == full_text[:full_text.find(s)] and last.finish_reason == "stop", s
        assert last.generated == completes, s
    # min_tokens: a stop string completed within the first min_tokens tokens does not end the answer
    s = stops[0]
    completes = next(j for j in range(1, 13) if s in engine.decode(full[:j]))
    held = SamplingParams(max_tokens=12, greedy=True, stop=[s], min_tokens=completes)
    [(text, last)] = _last_events(engine, [engine.encode(x["taskname"], x["fields"], None, held)])
    assert last.generated > completes and text.startswith(engine.decode(full[:completes]))


def test_logprobs_and_echo_of_a_completion(table_uri, tiny_gpt2_path):
    """OpenAI's legacy layout: with echo the prompt as the model read it (virtual tokens left out) comes
    first; tokens join to the returned text; greedy picks each token's most likely alternative."""
    engine = ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32"))
    p = engine.encode("sent", {"text": "A wonderful, moving film."}, None,
                      SamplingParams(max_tokens=5, greedy=True, logprobs=2))
    [(text, last)] = _last_events(engine, [p])
    echo = engine.prompt_text(p)
    assert echo == " Review: A wonderful, moving film. Sentiment:"
    n_prompt = len(engine.tokenizer.encode(echo))
    plain, echoed = engine.logprobs(p, last.logprobs, echo=False), engine.logprobs(p, last.logprobs, echo=True)
    assert "".join(plain["tokens"]) == text and len(plain["tokens"]) == last.generated == 5
    assert "".join(echoed["tokens"]) == echo + text and len(echoed["tokens"]) == n_prompt + 5
    assert echoed["token_logprobs"][0] is not None  # the prompt starts with virtual tokens: its first has context
    assert echoed["text_offset"][n_prompt:] == [len(echo) + o for o in plain["text_offset"]]
    assert echoed["tokens"][n_prompt:] == plain["tokens"]
    assert echoed["token_logprobs"][n_prompt:] == plain["token_logprobs"]
    for tok, lp, top in zip(plain["tokens"], plain["token_logprobs"], plain["top_logprobs"]):
        assert top[tok] == lp == max(top.values()) and len(top) == 2  # greedy: the chosen one is the top one
    assert all(len(t) <= 3 for t in echoed["top_logprobs"])  # k alternatives plus the chosen token


def test_cli_serve_checks_every_flag_before_ray_starts(capsys, monkeypatch):  # issue 13, F2
    import promptray.jobs.cli as cli

    monkeypatch.setattr(cli, "_import_serving", lambda: pytest.fail("Ray must not start on bad flags"))
    argv = ["serve", "--table", "s3://b/t", "--replicas", "0", "--max-batch-size", "-1", "--refresh-s", "-1",
            "--port=70000"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "promptray serve: error: invalid serve flags (4 problems):",
        "  - --replicas 0: give at least 1 replica",
        "  - --port 70000: give a TCP port from 1 to 65535",
        "  - --max-batch-size -1: input should be greater than or equal to 1",
        "  - --refresh-s -1.0: input should be greater than or equal to 0"]
    assert cli.main(["serve", "--table", "s3://b/t", "--port=-5", "--refresh-s", "nan"]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == ["  - --port -5: give a TCP port from 1 to 65535",
                                                        "  - --refresh-s nan: input should be a finite number"]


def test_field_errors_name_their_param_on_both_routes(table_uri, tiny_gpt2_path):  # issue 13, F9 + F15
    from promptray.serve.app import _prompt_fields, encode_at
    from promptray.serve.errors import InputFieldError

    engine = ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32"))
    params = SamplingParams(max_tokens=3, greedy=True)
    cases = [({"context": "c", "question": "q", "foo": 1}, ("fields", True), "fields.foo"),
             ({"context": "c", "question": "q", "foo": 1}, ("inputs.1.fields", True), "inputs.1.fields.foo"),
             ({"context": "c"}, ("prompt", True), "prompt.question"),
             ({"context": "c"}, ("prompt.2", False), "prompt.2")]
    for fields, where, param in cases:
        with pytest.raises(InputFieldError) as err:
            encode_at(engine, "qa", fields, None, params, where)
        assert err.value.param == param
    obj = {"context": "The station is north.", "question": "Where?"}
    as_object = encode_at(engine, "qa", _prompt_fields(["context", "question"], obj), None, params,
                          ("prompt", True))
    as_string = encode_at(engine, "qa", _prompt_fields(["context", "question"], json.dumps(obj)), None, params,
                          ("prompt", False))
    assert as_object.example.input_ids == as_string.example.input_ids
    with pytest.raises(InputFieldError) as err:
        _prompt_fields(["context", "question"], "hello", "prompt.1")
    assert err.value.param == "prompt.1" and str(err.value) == (
        "this task has input fields ['context', 'question']: give prompt as a JSON object of them, e.g. "
        '{"context": "...", "question": "..."} (or that object JSON-encoded as a string), or use /v1/generate')
    assert _prompt_fields(["text"], '{"text": "x"}') == {"text": '{"text": "x"}'}  # one field: taken literally
    assert _prompt_fields(["text"], {"text": "x"}) == {"text": "x"}


def test_both_front_ends_take_the_engines_ranges():
    """A value just outside an engine range (RANGES) is refused by the engine's problems(), by NeMo's
    `inference:` keys and by a request's OpenAI fields, each under its own name; the edge itself is accepted."""
    from pydantic import ValidationError

    from promptray.platform.generation.infer_config import InferenceParams

    cases = [("max_new_tokens", "tokens_to_generate", "max_tokens", 1, 0),
             ("temperature", "temperature", "temperature", 0.0, -0.5),
             ("top_k", "top_k", "top_k", 0, -1), ("top_p", "top_p", "top_p", 1.0, 1.5),
             ("repetition_penalty", "repetition_penalty", "repetition_penalty", 100.0, 100.5)]
    for engine, nemo, openai, edge, outside in cases:
        assert GenerationParams(**{engine: edge}).problems() == []
        assert GenerationParams(**{engine: outside}).problems()[0].startswith(f"{engine} must be")
        for model, key in ((InferenceParams, nemo), (SamplingParams, openai)):
            model(**{key: edge})
            with pytest.raises(ValidationError) as e:
                model(**{key: outside})
            assert e.value.errors()[0]["loc"] == (key,)
