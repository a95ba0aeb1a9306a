"""Small prompts and raw-object access shared by the prompt table tests (not a test module)."""

from __future__ import annotations

import torch

from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.testing.seaweedfs import SeaweedFS

HIDDEN = 16
# variables that could point boto3 at a real account or profile; tests use the server's env only
AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_REGION")


def fingerprint(hidden: int = HIDDEN) -> BaseModelFingerprint:
    return BaseModelFingerprint(name="tiny", architecture="LlamaForCausalLM", hidden_size=hidden,
                                vocab_size=100, embedding_sha256="ab" * 32)


def make_prompt(name: str, n: int, seed: int = 0, hidden: int = HIDDEN, **kw) -> TaskPrompt:
    emb = torch.randn(n, hidden, generator=torch.Generator().manual_seed(seed))
    template = {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} {answer}",
                "total_virtual_tokens": n, "virtual_token_splits": [n], "truncate_field": "text",
                "answer_only_loss": True, "answer_field": "answer"}
    return TaskPrompt(taskname=name, embeddings=emb, template=template, style="prompt-tuning",
                      base_model=fingerprint(hidden), **kw)


def overwrite_raw(table: PromptTable, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the table's back (what bit rot or a stray writer would do)."""
    store = table.store
    if hasattr(store, "root"):
        path = store.root.joinpath(*key.split("/"))
        path.chmod(0o644)
        path.write_bytes(data)
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=data)


def isolate_aws_env(monkeypatch, tmp_path, server: SeaweedFS | None) -> None:
    """Only the server's endpoint and credentials (or none), no profile files, never IMDS."""
    for var in AWS_VARS + ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k, v in (server.env() if server else {}).items():
        monkeypatch.setenv(k, v)
