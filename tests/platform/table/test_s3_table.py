"""The prompt table on S3 (SeaweedFS on loopback) under concurrent writers and a server crash."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch

from promptray.platform.errors import StoreUnavailableError
from promptray.platform.table.table import PromptTable
from promptray.platform.testing.seaweedfs import SeaweedFS

from table_helpers import isolate_aws_env, make_prompt

pytestmark = pytest.mark.s3
WORKERS, TASKS_EACH = 8, 4


def _publisher(uri: str, worker: int, barrier) -> None:
    table = PromptTable(uri)
    table.exists()  # connect before the start line
    barrier.wait(timeout=120)
    for j in range(TASKS_EACH):
        table.publish([make_prompt(f"w{worker}-t{j}", 1 + j, seed=100 * worker + j)])


def test_concurrent_publishers_lose_nothing(s3_bucket):
    uri = f"s3://{s3_bucket}/shared"
    # fresh processes like "spawn", but forked from one clean server that imported torch once (8 torch
    # imports at once take ~30 s on a busy 2-core machine); no state of this test process is inherited
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "boto3", "promptray.platform.table.table", __name__])
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_publisher, args=(uri, w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    table = PromptTable(uri)
    names = sorted(f"w{w}-t{j}" for w in range(WORKERS) for j in range(TASKS_EACH))
    assert table.tasks() == names
    m = json.loads(table.store.read_manifest()[0])
    assert m["generation"] == WORKERS * TASKS_EACH  # one generation per publish, none lost or doubled
    assert sorted(m["versions"]) == sorted(m["history"]) == sorted(m["log"]) == names
    got = table.get_many(names)  # every referenced object is there and matches its checksum
    for w in range(WORKERS):
        for j in range(TASKS_EACH):
            name = f"w{w}-t{j}"
            assert torch.equal(got[name].embeddings, make_prompt(name, 1 + j, seed=100 * w + j).embeddings)
            assert [h.version for h in table.history(name)] == [got[name].version]
            assert [e.action for e in table.log(name)] == ["publish"]
    generations = sorted(e["generation"] for events in m["log"].values() for e in events)
    assert generations == list(range(1, WORKERS * TASKS_EACH + 1))


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A server of this test alone (it gets killed and restarted), with its env set."""
    server = SeaweedFS(tmp_path / "seaweedfs").start()
    try:
        isolate_aws_env(monkeypatch, tmp_path, server)
        server.create_bucket("crash-test")
        yield server
    finally:
        server.stop(grace=0.5)


def test_server_killed_between_upload_and_manifest_swap(own_server, monkeypatch):
    table = PromptTable("s3://crash-test/t")
    old = make_prompt("a", 3, seed=1)
    v1 = table.publish([old])["a"]
    manifest_before = table.store.read_manifest()[0]
    objects_before = {o.key for o in table.store.list_objects("objects/")}
    swap = table.store.swap_manifest

    def crash_then_swap(data, expected_etag):
        assert len(table.store.list_objects("objects/")) == 3  # the new objects are uploaded
        own_server.kill()
        return swap(data, expected_etag)

    new = [make_prompt("a", 4, seed=2), make_prompt("b", 5, seed=3)]
    with monkeypatch.context() as patch:
        patch.setattr(table.store, "swap_manifest", crash_then_swap)
        with pytest.raises(StoreUnavailableError, match="cannot reach the S3 endpoint") as e:
            table.publish(new)
    assert own_server.endpoint in str(e.value) and "s3://crash-test/t" in str(e.value)
    with pytest.raises(StoreUnavailableError):
        PromptTable("s3://crash-test/t").get("a")  # down: a clear error, not a half-read table

    own_server.start()  # same data folder and ports
    reader = PromptTable("s3://crash-test/t")
    assert reader.store.read_manifest()[0] == manifest_before  # still the previous version
    assert reader.tasks() == ["a"] and [h.version for h in reader.history("a")] == [v1]
    assert torch.equal(reader.get("a").embeddings, old.embeddings)
    orphans = {o.key for o in reader.store.list_objects("objects/")} - objects_before
    assert len(orphans) == 2  # uploaded, never referenced: invisible to readers

    versions = table.publish(new)  # the retry succeeds
    assert reader.tasks() == ["a", "b"] and versions["a"].startswith("v000002-")
    assert torch.equal(reader.get("b").embeddings, new[1].embeddings)
    assert json.loads(reader.store.read_manifest()[0])["generation"] == 2
    assert set(reader.gc(grace_seconds=0)) == orphans
