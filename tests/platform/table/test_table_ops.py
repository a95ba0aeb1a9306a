"""Every prompt table operation on both backends (a local folder and S3 on SeaweedFS): publish, get,
tasks, history, log, rollback, delete, gc, checksums, and copying a local table to S3."""

from __future__ import annotations

import json

import pytest
import torch

from promptray.platform.errors import PromptTableError
from promptray.platform.table.table import PromptTable, TableEvent, copy_table

from table_helpers import HIDDEN, make_prompt, overwrite_raw


def manifest(table: PromptTable) -> dict:
    return json.loads(table.store.read_manifest()[0])


def test_round_trip_with_different_token_counts(table_uri):
    table = PromptTable(table_uri)
    assert not table.exists() and table.tasks() == [] and table.describe() == []
    prompts = [make_prompt(f"task-{n}", n, seed=n, metrics={"val_loss": n / 10}, source={"job": f"j{n}"})
               for n in (1, 7, 100)]
    prompts[1].style = "p-tuning"
    versions = table.publish(prompts)
    assert table.tasks() == ["task-1", "task-100", "task-7"]
    for p in prompts:
        got = table.get(p.taskname)
        assert torch.equal(got.embeddings, p.embeddings) and got.embeddings.shape == (p.num_virtual_tokens, HIDDEN)
        assert (got.template, got.style, got.base_model, got.metrics, got.source) == (
            p.template, p.style, p.base_model, p.metrics, p.source)
        assert got.version == versions[p.taskname] and got.created_at.endswith("Z")
    assert {i.taskname: i.num_virtual_tokens for i in table.describe()} == {"task-1": 1, "task-7": 7, "task-100": 100}
    many = table.get_many(["task-7", "task-1"])
    assert torch.equal(many["task-7"].embeddings, prompts[1].embeddings)
    second = table.publish([make_prompt("task-7", 3, seed=99)])["task-7"]
    assert [h.version for h in table.history("task-7")] == [versions["task-7"], second]
    assert table.get("task-7").num_virtual_tokens == 3
    assert torch.equal(table.get("task-7", version=versions["task-7"]).embeddings, prompts[1].embeddings)
    assert [e.action for e in table.log("task-7")] == ["publish", "publish"]
    with pytest.raises(PromptTableError, match="known tasks: task-1, task-100, task-7"):
        table.get("nope")


def test_rollback(table_uri):
    table = PromptTable(table_uri)
    v1 = table.publish([make_prompt("t", 2, seed=1), make_prompt("other", 3, seed=5)])["t"]
    v2 = table.publish([make_prompt("t", 4, seed=2)])["t"]
    info = table.rollback("t", v1)
    assert info.version == v1 and table.get("t").version == v1 and table.get("t").num_virtual_tokens == 2
    assert torch.equal(table.get("t").embeddings, make_prompt("t", 2, seed=1).embeddings)
    assert [h.version for h in table.history("t")] == [v1, v2]  # history keeps every published version
    log = table.log("t")
    assert [(e.action, e.version) for e in log] == [("publish", v1), ("publish", v2), ("rollback", v1)]
    assert isinstance(log[-1], TableEvent) and log[-1].generation == manifest(table)["generation"] == 3
    generation = manifest(table)["generation"]
    table.rollback("t", v1)  # already current: nothing to do
    assert manifest(table)["generation"] == generation
    v3 = table.publish([make_prompt("t", 5, seed=3)])["t"]
    assert v3.startswith("v000003-") and table.get("t").version == v3
    assert table.get("other").version.startswith("v000001-")  # other tasks untouched
    with pytest.raises(PromptTableError, match="known versions"):
        table.rollback("t", "v000042-deadbeef")
    with pytest.raises(PromptTableError, match="no task 'ghost'"):
        table.rollback("ghost", v1)


def test_delete_keeps_history_and_can_be_rolled_back(table_uri):
    table = PromptTable(table_uri)
    vids = table.publish([make_prompt("keep", 2, seed=1), make_prompt("drop", 3, seed=2)])
    assert table.delete("drop").version == vids["drop"]
    assert table.tasks() == ["keep"] and table.tasks(include_deleted=True) == ["drop", "keep"]
    assert table.deleted_tasks() == ["drop"] and [i.taskname for i in table.describe()] == ["keep"]
    with pytest.raises(PromptTableError, match="was deleted.*rollback") as e:
        table.get("drop")
    assert vids["drop"] in str(e.value)
    assert table.get("drop", version=vids["drop"]).num_virtual_tokens == 3  # versions stay readable
    assert [h.version for h in table.history("drop")] == [vids["drop"]]
    assert [e.action for e in table.log("drop")] == ["publish", "delete"]
    with pytest.raises(PromptTableError, match="already deleted"):
        table.delete("drop")
    with pytest.raises(PromptTableError, match="does not exist"):
        table.delete("never")
    table.rollback("drop", vids["drop"])
    assert table.tasks() == ["drop", "keep"] and table.get("drop").version == vids["drop"]
    again = table.publish([make_prompt("drop", 1, seed=3)])["drop"]  # a deleted name can be published again
    assert again.startswith("v000002-")


def test_ops_on_a_missing_table(table_uri):
    table = PromptTable(table_uri)
    for op in (lambda: table.get("t"), lambda: table.rollback("t", "v1"), lambda: table.delete("t"),
               lambda: table.history("t"), table.gc):
        with pytest.raises(PromptTableError, match="has no prompt table"):
            op()
    assert not table.exists()


def _publish_failing_at_swap(table, prompts, monkeypatch):
    """publish() whose manifest swap fails: its objects are written, the manifest is not."""
    def broken(data, expected_etag):
        raise OSError("lost connection")
    with monkeypatch.context() as patch:
        patch.setattr(table.store, "swap_manifest", broken)
        with pytest.raises(OSError, match="lost connection"):
            table.publish(prompts)


def test_gc_removes_only_old_unreferenced_objects(table_uri, monkeypatch):
    table = PromptTable(table_uri)
    vids = table.publish([make_prompt("a", 2, seed=1), make_prompt("b", 2, seed=2)])
    table.publish([make_prompt("a", 3, seed=3)])
    table.delete("b")  # a deleted task's objects are still referenced
    _publish_failing_at_swap(table, [make_prompt("a", 4, seed=4), make_prompt("c", 1, seed=5)], monkeypatch)
    before = manifest(table)
    orphans = sorted(o.key for o in table.store.list_objects("objects/")
                     if o.key not in {i["object_key"] for v in before["versions"].values() for i in v.values()})
    assert len(orphans) == 2 and table.tasks() == ["a"]
    assert table.gc() == [] and table.gc(dry_run=True, grace_seconds=3600) == []  # too young to collect
    assert table.gc(dry_run=True, grace_seconds=0) == orphans
    assert len(table.store.list_objects("objects/")) == 5
    assert table.gc(grace_seconds=0) == orphans
    assert sorted(o.key for o in table.store.list_objects("objects/")) == sorted(
        i["object_key"] for v in before["versions"].values() for i in v.values())
    assert manifest(table) == before
    for name in ("a", "b"):
        for info in table.history(name):
            assert table.get(name, version=info.version).version == info.version
    assert table.get("b", version=vids["b"]).num_virtual_tokens == 2


def test_republish_of_identical_bytes_gets_a_fresh_object(table_uri, monkeypatch):
    """Bytes left by a failed publish are not reused (their age could let gc take them mid-publish)."""
    table = PromptTable(table_uri)
    prompt = make_prompt("a", 2, seed=1, created_at="2030-01-01T00:00:00.000000Z")
    _publish_failing_at_swap(table, [prompt], monkeypatch)
    (orphan,) = [o.key for o in table.store.list_objects("objects/")]
    vid = table.publish([prompt])["a"]
    info = table.describe()[0]
    assert orphan == f"objects/a/{info.sha256}.safetensors" != info.object_key and info.version == vid
    assert table.gc(grace_seconds=0) == [orphan] and torch.equal(table.get("a").embeddings, prompt.embeddings)


def test_a_lost_swap_reply_does_not_publish_twice(table_uri, monkeypatch):
    """The manifest write landed but its answer was lost (a conflict on retry): publish once, not twice."""
    table = PromptTable(table_uri)
    table.publish([make_prompt("a", 1, seed=1)])
    swap = table.store.swap_manifest

    def lands_but_reports_conflict(data, expected_etag):
        assert swap(data, expected_etag)
        return False
    with monkeypatch.context() as patch:
        patch.setattr(table.store, "swap_manifest", lands_but_reports_conflict)
        vid = table.publish([make_prompt("b", 1, seed=2)])["b"]
    assert vid.startswith("v000001-") and [h.version for h in table.history("b")] == [vid]
    assert manifest(table)["generation"] == 2


def test_corrupted_object_is_detected(table_uri):
    table = PromptTable(table_uri)
    vids = table.publish([make_prompt("good", 2, seed=1), make_prompt("bad", 2, seed=2)])
    key = table.describe()[0].object_key
    data = bytearray(table.store.read(key))
    data[-1] ^= 0x01
    overwrite_raw(table, key, bytes(data))
    with pytest.raises(PromptTableError, match="corrupted") as e:
        table.get("bad")
    assert "'bad'" in str(e.value) and vids["bad"] in str(e.value) and table.store.location() in str(e.value)
    assert table.get("good").version == vids["good"]


@pytest.mark.s3
def test_local_table_copied_to_s3_reads_the_same(tmp_path, s3_bucket):
    local = PromptTable(tmp_path / "local")
    first = local.publish([make_prompt(f"t{n}", n, seed=n) for n in (1, 5, 20)])
    local.publish([make_prompt("t5", 8, seed=50)])
    local.rollback("t5", first["t5"])
    local.delete("t1")
    remote = PromptTable(f"s3://{s3_bucket}/copied")
    assert copy_table(local.uri, remote.uri) == 4
    assert remote.store.read_manifest()[0] == local.store.read_manifest()[0]
    assert remote.tasks(include_deleted=True) == local.tasks(include_deleted=True) == ["t1", "t20", "t5"]
    assert remote.describe() == local.describe() and remote.tasks() == ["t20", "t5"]
    for name in remote.tasks(include_deleted=True):
        assert remote.history(name) == local.history(name) and remote.log(name) == local.log(name)
        for info in remote.history(name):
            a, b = local.get(name, version=info.version), remote.get(name, version=info.version)
            assert torch.equal(a.embeddings, b.embeddings) and (a.template, a.metrics, a.created_at) == (
                b.template, b.metrics, b.created_at)
    remote.publish([make_prompt("t20", 2, seed=7)])  # the copy is a live table
    assert remote.get("t20").version.startswith("v000002-") and local.get("t20").version.startswith("v000001-")
    with pytest.raises(PromptTableError, match="already holds a prompt table"):
        copy_table(local, remote)
    back = PromptTable(tmp_path / "back")
    copy_table(remote, back)
    assert back.describe() == remote.describe()


def test_versions_published_by_finds_a_runs_own_versions_only(tmp_path):
    from promptray.platform.table.manifest import utcnow
    from promptray.platform.train.publishing import versions_published_by

    from table_helpers import make_prompt

    table = PromptTable(tmp_path / "t")
    table.publish([make_prompt("old", 2)])
    run = {"id": "job-1", "started_at": utcnow()}
    assert versions_published_by(table, ["a"], run) is None  # not in the table yet
    ours = table.publish([make_prompt("a", 3, source={"run_id": "job-1"}),
                          make_prompt("old", 2, seed=1)])  # a copied existing task, published with it
    later = table.publish([make_prompt("a", 3, seed=2, source={"run_id": "job-2"})])  # another run, after ours
    assert versions_published_by(table, ["a"], run, copied=["old"]) == {"a": ours["a"], "old": ours["old"]}
    assert versions_published_by(table, ["a"], {"id": "job-2", "started_at": run["started_at"]}) == later
    assert versions_published_by(table, ["a"], {"id": "job-3", "started_at": run["started_at"]}) is None
    assert versions_published_by(table, ["a"], {"id": "job-1", "started_at": utcnow()}) is None  # began later
