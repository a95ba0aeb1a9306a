"""A Serve app on the test session's shared Ray (tests/conftest.py `ray_local`), on a loopback port, serving a
prompt table built here for the tiny random-weight GPT-2; stopped at the end of the module."""

from __future__ import annotations

import pytest

from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.table.table import PromptTable

from serve_helpers import API_KEY, TEMPLATES, free_port, make_prompt, wait_ready


@pytest.fixture(scope="module")
def model_fingerprint(tiny_gpt2_path):
    lm, _ = load_base_model(str(tiny_gpt2_path))
    return fingerprint_model(lm, str(tiny_gpt2_path)), lm.get_input_embeddings().weight.shape[1]


@pytest.fixture(scope="module")
def table_uri(tmp_path_factory, model_fingerprint) -> str:
    fp, hidden = model_fingerprint
    uri = str(tmp_path_factory.mktemp("serve") / "table")
    PromptTable(uri).publish([make_prompt(name, fp, hidden, seed=i) for i, name in enumerate(TEMPLATES)])
    return uri


@pytest.fixture(scope="module")
def server(ray_local, table_uri, tiny_gpt2_path, tmp_path_factory):
    """Base URL of app "main" (auth on, prefix cache on) at / and app "plain" (prefix cache off) at /plain."""
    from ray import serve

    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one key a line\n{API_KEY}\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = dict(table=table_uri, model=str(tiny_gpt2_path), precision="fp32", max_batch_size=8,
                  batch_wait_timeout_s=0.2, refresh_s=1.0, max_body_bytes=4096, api_keys_env=None)
    main = ServerSettings(**common, api_keys_file=str(keys))
    plain = ServerSettings(**common, prefix_cache=False)
    try:
        serve.run(build_app(main, ray_actor_options={"num_cpus": 0}), name="main", route_prefix="/", blocking=False)
        serve.run(build_app(plain, ray_actor_options={"num_cpus": 0}), name="plain", route_prefix="/plain",
                  blocking=False)
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz")
        wait_ready(f"{base}/plain/healthz")
        yield base
    finally:
        serve.shutdown()

