"""How a publish writes, on both backends (a local folder and S3 on SeaweedFS): each object once, under a
content-addressed key, before the manifest's compare-and-swap; tables written with version-named keys still read."""

from __future__ import annotations

import torch

from promptray.platform.storage.base import sha256_hex
from promptray.platform.table import manifest as tm
from promptray.platform.table.codec import encode_prompt
from promptray.platform.table.table import PromptTable, VersionInfo

from table_helpers import make_prompt

CREATED = "2030-01-01T00:00:00.000000Z"  # fixed, so the same prompt encodes to the same bytes


class CountingStore:
    """A store that records every object write, and before each of its first `conflicts` manifest swaps lets
    another writer publish a version of task "a", so each of those swaps meets a real conflict."""

    def __init__(self, inner, rival: PromptTable, conflicts: int):
        self.inner, self.rival, self.conflicts = inner, rival, conflicts
        self.writes: list[str] = []
        self.swaps = 0

    def __getattr__(self, name):  # location, read, list_objects, ... and max_parallel_writes
        return getattr(self.inner, name)

    def write_immutable(self, key: str, data: bytes) -> bool:
        self.writes.append(key)
        return self.inner.write_immutable(key, data)

    def swap_manifest(self, data: bytes, expected_etag: str | None) -> bool:
        self.swaps += 1
        if self.swaps <= self.conflicts:
            self.rival.publish([make_prompt("a", 1, seed=100 + self.swaps)])
        return self.inner.swap_manifest(data, expected_etag)


def stored_keys(table: PromptTable) -> set[str]:
    return {o.key for o in table.store.list_objects("objects/")}


def referenced(table: PromptTable) -> set[str]:
    return tm.referenced_keys(tm.parse(table.store.read_manifest()[0], "manifest"))


def test_publish_through_conflicts_uploads_each_object_once(table_uri):
    rival = PromptTable(table_uri)
    rival.publish([make_prompt("a", 2, seed=1)])
    counting = CountingStore(PromptTable(table_uri).store, rival, conflicts=3)
    table = PromptTable(table_uri, store=counting)
    mine = [make_prompt("a", 3, seed=2, created_at=CREATED), make_prompt("b", 4, seed=3, created_at=CREATED)]
    versions = table.publish(mine)
    keys = {p.taskname: f"objects/{p.taskname}/{sha256_hex(encode_prompt(p))}.safetensors" for p in mine}
    assert sorted(counting.writes) == sorted(keys.values()) and counting.swaps == 4  # 3 conflicts, then the swap
    assert versions["a"].startswith("v000005-") and versions["b"].startswith("v000001-")  # 1 + 3 rivals before
    assert {n: table.get(n).version for n in ("a", "b")} == versions
    assert {i.taskname: i.object_key for i in table.describe()} == keys
    assert stored_keys(table) == referenced(table) and len(stored_keys(table)) == 6  # no extra keys left
    assert table.gc(grace_seconds=0) == []
    for p in mine:
        assert torch.equal(table.get(p.taskname).embeddings, p.embeddings)


def test_republishing_the_same_bytes_reuses_the_referenced_object(table_uri):
    counting = CountingStore(PromptTable(table_uri).store, PromptTable(table_uri), conflicts=0)
    table = PromptTable(table_uri, store=counting)
    prompt = make_prompt("a", 2, seed=1, created_at=CREATED)
    v1 = table.publish([prompt])["a"]
    v2 = table.publish([prompt])["a"]
    h1, h2 = table.history("a")
    assert (h1.version, h2.version) == (v1, v2) and v1.startswith("v000001-") and v2.startswith("v000002-")
    assert h1.object_key == h2.object_key and counting.writes == [h1.object_key]  # written once, used twice
    assert stored_keys(table) == {h1.object_key} and table.gc(grace_seconds=0) == []


def test_a_table_with_version_named_objects_still_reads(table_uri):
    """The layout written before content addressing: objects/<taskname>/<version>.safetensors."""
    table = PromptTable(table_uri)
    old = make_prompt("a", 2, seed=1, created_at=CREATED)
    data = encode_prompt(old)
    vid = f"v000001-{sha256_hex(data)[:8]}"
    info = VersionInfo(taskname="a", version=vid, object_key=f"objects/a/{vid}.safetensors", sha256=sha256_hex(data),
                       num_virtual_tokens=2, style=old.style, created_at=CREATED)
    assert table.store.write_immutable(info.object_key, data)
    assert table.store.swap_manifest(tm.dump(tm.with_published(tm.empty(), [info])), None)

    got = table.get("a")
    assert got.version == vid and torch.equal(got.embeddings, old.embeddings)
    new = make_prompt("a", 3, seed=2)
    v2 = table.publish([new])["a"]
    assert v2.startswith("v000002-") and torch.equal(table.get("a").embeddings, new.embeddings)
    assert table.history("a")[1].object_key == f"objects/a/{table.history('a')[1].sha256}.safetensors"
    assert table.gc(grace_seconds=0) == [] and stored_keys(table) == referenced(table)
    assert table.rollback("a", vid).object_key == info.object_key
    assert torch.equal(table.get("a").embeddings, old.embeddings)
