"""The HTTP plumbing without Ray: one error body (OpenAI's) for every failure, JSON bodies whatever their
Content-Type, unsupported OpenAI parameters named, offline /docs; and `promptray serve` without Ray installed."""

from __future__ import annotations

import json
import re
import sys

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from promptray.jobs.cli import main
from promptray.serve.auth import ApiKeys, BodyLimit
from promptray.serve.errors import UnknownTaskError
from promptray.serve.http import make_api
from promptray.serve.schemas import CompletionRequest, GenerateRequest

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    api = make_api(title="t")
    api.add_middleware(BodyLimit)
    api.state.max_body_bytes, api.state.keys = 2048, ApiKeys(["k1"])

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if req.model == "nope":
            raise UnknownTaskError("unknown task 'nope'; known tasks: ['a']", param="model")
        return {"model": req.model, "prompts": req.prompts()}

    @api.post("/v1/generate")
    async def generate(req: GenerateRequest, _=Depends(ApiKeys.check)):
        return {"n": len(req.items())}

    @api.get("/boom")
    async def boom():
        raise RuntimeError("secret internals")

    return TestClient(api, raise_server_exceptions=False)


def error(r) -> dict:
    body = r.json()
    assert set(body) == {"error"} and ERROR_KEYS <= set(body["error"]), body
    return body["error"]


@pytest.mark.parametrize("extra,param,needle", [
    ({"n": 2}, "n", "n=2 is not supported by this server; omit it or send 1"),
    ({"best_of": 3}, "best_of", "best_of=3 is not supported"),
    ({"suffix": "x"}, "suffix", "suffix='x' is not supported by this server; omit it"),
    ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty=0.5 is not supported"),
    ({"frequency_penalty": -1.0}, "frequency_penalty", "frequency_penalty=-1.0 is not supported"),
    ({"logit_bias": {"50256": -100}}, "logit_bias", "logit_bias={'50256': -100.0} is not supported"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream_options="),
    ({"colour": "red"}, "colour", "unknown parameter 'colour'"),
    ({"prompt": [50256, 11]}, "prompt", "prompt: give a string, a JSON object of the task's input fields, or a "
                                        "non-empty list of them (token-id prompts are not supported)"),
    ({"temperature": -1}, "temperature", "temperature: Input should be greater than or equal to 0"),
])
def test_unsupported_or_unknown_openai_parameters_are_422_naming_them(client, extra, param, needle):
    r = client.post("/v1/completions", json={"model": "a", "prompt": "hi", **extra})
    err = error(r)
    assert r.status_code == 422 and err["param"] == param and needle in err["message"], err
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_value"


def test_neutral_values_of_unsupported_parameters_and_user_are_accepted(client):
    body = {"model": "a", "prompt": ["x", "y"], "n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0,
            "logit_bias": {}, "user": "alice"}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json() == {"model": "a", "prompts": ["x", "y"]}


def test_every_problem_of_a_body_in_one_error_with_dotted_field_names(client):
    body = {"inputs": [{"taskname": "a", "fields": {}, "colour": 1}], "max_tokens": 0}
    err = error(client.post("/v1/generate", json=body, headers={"Authorization": "Bearer k1"}))
    assert err["param"] == "max_tokens"
    assert err["problems"] == ["max_tokens: Input should be greater than or equal to 1",
                               "unknown parameter 'inputs.0.colour': this route does not take it (see /docs)"]


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "text/plain"}])
def test_a_json_body_is_json_whatever_the_content_type(client, headers):
    r = client.post("/v1/completions", content=b'{"model": "a", "prompt": "hi"}', headers=headers)
    assert r.status_code == 200 and r.json()["prompts"] == ["hi"], r.text


def test_a_body_that_is_not_json_or_not_an_object_says_so(client):
    r = client.post("/v1/completions", content=b"model=a&prompt=hi",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    err = error(r)
    assert r.status_code == 400 and err["code"] == "invalid_json" and "not valid JSON" in err["message"]
    r = client.post("/v1/completions", json=["a"])
    assert r.status_code == 422 and "must be a JSON object" in error(r)["message"]
    r = client.post("/v1/completions")  # an empty body is not JSON either (issue 13, F15)
    err = error(r)
    assert r.status_code == 400 and err["code"] == "invalid_json"
    assert err["message"] == "the request body is empty; send a JSON object of the route's parameters (see /docs)"
    r = client.post("/v1/generate", json={"fields": {}}, headers={"Authorization": "Bearer k1"})  # whole-model rule
    assert r.status_code == 422 and error(r)["message"].startswith("give either taskname") and error(r)["param"] is None


def test_401_404_413_500_have_the_same_shape(client):
    r = client.post("/v1/generate", json={"taskname": "a"})
    assert r.status_code == 401 and error(r)["type"] == "authentication_error"
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    err = error(r)
    assert r.status_code == 404 and (err["param"], err["code"]) == ("model", "model_not_found")
    assert err["message"] == "unknown task 'nope'; known tasks: ['a']"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and error(r)["message"] == "no route GET /v1/nothing-here; see /docs"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "Method Not Allowed" in error(r)["message"]
    r = client.post("/v1/completions", json={"model": "a", "prompt": "x" * 5000})
    err = error(r)
    assert r.status_code == 413 and err["code"] == "request_too_large" and err["limit"] == 2048
    r = client.get("/boom")
    err = error(r)
    assert r.status_code == 500 and err["type"] == "server_error" and "secret" not in err["message"]
    assert "RuntimeError" in err["message"]


def test_docs_use_only_local_assets_and_they_load(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*'([^']+)'""", page.text)
    urls = [a or b for a, b in urls]
    assert urls and not [u for u in urls if "://" in u or u.startswith("//")], urls
    assert any(u.endswith("swagger-ui-bundle.js") for u in urls) and any(u.endswith(".css") for u in urls)
    for u in urls:
        got = client.get(u)
        assert got.status_code == 200 and len(got.content) > 100, u
    assert client.get("/redoc").status_code == 200 and "cdn" not in client.get("/redoc").text.lower()


def test_serve_without_ray_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["serve", "--table", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("promptray serve: error: serving needs Ray Serve and FastAPI, and 'ray' is not installed: "
                   "pip install 'promptray[ray]'")


@pytest.mark.parametrize("extra,param,message", [  # issue 13, F12: strict JSON types, NaN/inf refused
    ({"temperature": True}, "temperature", "temperature: give a number (not a string or a boolean), got true"),
    ({"greedy": "yes"}, "greedy", 'greedy: give true or false (not a string or a number), got "yes"'),
    ({"greedy": 1}, "greedy", "greedy: give true or false (not a string or a number), got 1"),
    ({"temperature": "nan"}, "temperature", "temperature: give a number (not a string or a boolean), got \"nan\""),
    ({"max_tokens": 2.5}, "max_tokens", "max_tokens: give an integer (not a string, a boolean or a fraction), "
                                        "got 2.5"),
    ({"echo": "true"}, "echo", 'echo: give true or false (not a string or a number), got "true"'),
])
def test_numbers_and_booleans_are_strict_json_types(client, extra, param, message):
    r = client.post("/v1/completions", json={"model": "a", "prompt": "hi", **extra})
    err = error(r)
    assert r.status_code == 422 and err["param"] == param and err["message"] == message, err


@pytest.mark.parametrize("value,got", [(None, "null"), ([1], "[1]"), ({"a": 1}, '{"a": 1}')])
def test_a_field_value_of_no_json_scalar_type_is_one_problem(client, value, got):
    """Found by a new user: pydantic's one error per member of the field type (`fields.text.str`, `.int`, ...)
    and Python spellings (None) came out as four problems naming a param that does not exist."""
    r = client.post("/v1/generate", json={"taskname": "a", "fields": {"text": value}},
                    headers={"Authorization": "Bearer k1"})
    err = error(r)
    assert r.status_code == 422 and err["param"] == "fields.text"
    assert err["message"] == f"fields.text: give a string, a number or true/false, got {got}"


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused_saying_so(client, raw):  # Python's JSON reader accepts these literals
    r = client.post("/v1/completions", content=b'{"model": "a", "prompt": "hi", "top_p": ' + raw + b"}")
    err = error(r)
    assert r.status_code == 422 and err["param"] == "top_p"
    assert err["message"].startswith("top_p: NaN and infinity are not allowed; give a finite number, got ")


@pytest.mark.parametrize("body,param,message", [  # issue 13, F15: every error names its param
    ({"max_token": 3}, "max_token",
     "unknown parameter 'max_token': this route does not take it (did you mean 'max_tokens'?) (see /docs)"),
    ({"max_tokens": 2, "min_tokens": 5}, "min_tokens", "min_tokens: min_tokens (5) must not exceed max_tokens (2)"),
    ({"stream": True, "logprobs": 2}, "logprobs",
     "logprobs: logprobs is not supported with stream=true; ask without streaming"),
])
def test_every_error_names_its_param(client, body, param, message):
    err = error(client.post("/v1/completions", json={"model": "a", "prompt": "hi", **body}))
    assert (err["param"], err["message"]) == (param, message), err


def test_misplaced_fields_and_nested_typos_name_their_param(client):
    auth = {"Authorization": "Bearer k1"}
    err = error(client.post("/v1/generate", json={"inputs": [{"taskname": "a"}], "fields": {}}, headers=auth))
    assert err["param"] == "fields"
    assert err["message"] == "fields: belongs inside each item of inputs, not at the top level"
    err = error(client.post("/v1/generate", json={"inputs": [{"taskname": "a", "field": {}}]}, headers=auth))
    assert err["param"] == "inputs.0.field" and "(did you mean 'inputs.0.fields'?)" in err["message"]


def test_null_means_the_default_as_in_openai(client):
    body = {"model": "a", "prompt": "hi", "max_tokens": None, "temperature": None, "stop": None, "echo": None}
    assert client.post("/v1/completions", json=body).status_code == 200
    req = CompletionRequest.model_validate(body)
    assert (req.max_tokens, req.temperature, req.stop, req.echo) == (16, 1.0, [], False)
    r = client.post("/v1/completions", json={"model": "a", "prompt": None})  # a required one stays required
    assert r.status_code == 422 and error(r)["param"] == "prompt"


def test_prompt_as_a_json_object_or_a_list_of_them(client):  # issue 13, F9
    obj = {"context": "c", "question": "q"}
    for prompt, want in [(obj, [obj]), ([obj, "x"], [obj, "x"]), (json.dumps(obj), [json.dumps(obj)])]:
        r = client.post("/v1/completions", json={"model": "a", "prompt": prompt})
        assert r.status_code == 200 and r.json()["prompts"] == want, r.text
