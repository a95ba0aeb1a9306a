"""Tests of the versioned prompt table (local store)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp

import pytest
import torch
from safetensors import safe_open

from promptray.platform.errors import BaseModelMismatchError, ConfigError, PromptTableError
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.table.table import LocalStore, PromptTable, TaskPrompt, VersionInfo

HIDDEN = 16


def fingerprint(hidden: int = HIDDEN, sha: str = "ab" * 32, name: str = "tiny") -> BaseModelFingerprint:
    return BaseModelFingerprint(name=name, architecture="LlamaForCausalLM", hidden_size=hidden,
                                vocab_size=100, embedding_sha256=sha)


def template(name: str, n: int) -> dict:
    return {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} {answer}",
            "total_virtual_tokens": n, "virtual_token_splits": [n], "truncate_field": "text",
            "answer_only_loss": True, "answer_field": "answer"}


def make_prompt(name: str, n: int, seed: int = 0, hidden: int = HIDDEN, **kw) -> TaskPrompt:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, hidden, generator=gen)
    return TaskPrompt(taskname=name, embeddings=emb, template=template(name, n), style="prompt-tuning",
                      base_model=fingerprint(hidden), **kw)


def test_round_trip_is_bit_identical_with_metadata(tmp_path):
    table = PromptTable(tmp_path / "table")
    assert not table.exists() and table.tasks() == [] and table.describe() == []
    a = make_prompt("sentiment", 3, seed=1, metrics={"val_loss": 0.25}, source={"job": "j-1"})
    b = make_prompt("squad.v2", 7, seed=2)
    b.style = "p-tuning"
    versions = table.publish([a, b])
    assert table.exists() and table.tasks() == ["sentiment", "squad.v2"]
    got = table.get("sentiment")
    assert torch.equal(got.embeddings, a.embeddings) and got.embeddings.dtype == torch.float32
    assert (got.template, got.style, got.base_model) == (a.template, "prompt-tuning", a.base_model)
    assert got.metrics == {"val_loss": 0.25} and got.source == {"job": "j-1"}
    assert got.version == versions["sentiment"] and got.num_virtual_tokens == 3
    assert got.created_at.endswith("Z") and a.created_at == ""  # the caller's object is not mutated
    other = table.get("squad.v2")
    assert torch.equal(other.embeddings, b.embeddings) and other.num_virtual_tokens == 7
    assert other.style == "p-tuning"
    many = table.get_many(["squad.v2", "sentiment"])
    assert set(many) == {"sentiment", "squad.v2"} and torch.equal(many["sentiment"].embeddings, a.embeddings)


def test_on_disk_layout(tmp_path):
    root = tmp_path / "t"
    vid = PromptTable(root).publish([make_prompt("qa", 4, seed=3)])["qa"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "promptray-table/1" and manifest["generation"] == 1
    assert manifest["history"] == {"qa": [vid]} and manifest["tasks"]["qa"]["version"] == vid
    assert manifest["versions"]["qa"][vid] == manifest["tasks"]["qa"]
    sha = manifest["tasks"]["qa"]["sha256"]
    path = root / "objects" / "qa" / f"{sha}.safetensors"  # content-addressed
    assert manifest["tasks"]["qa"]["object_key"] == f"objects/qa/{sha}.safetensors"
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and vid == f"v000001-{sha[:8]}"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["promptray"])
        assert list(f.keys()) == ["embeddings"] and f.get_tensor("embeddings").shape == (4, HIDDEN)
    assert meta["taskname"] == "qa" and meta["base_model"]["hidden_size"] == HIDDEN


def test_versions_increment_and_history_is_oldest_first(tmp_path):
    table = PromptTable(tmp_path)
    prompts = [make_prompt("t", 2 + i, seed=10 + i) for i in range(3)]
    vids = [table.publish([p])["t"] for p in prompts]
    for seq, (vid, info) in enumerate(zip(vids, table.history("t")), start=1):
        data = (tmp_path / info.object_key).read_bytes()
        assert vid == f"v{seq:06d}-{hashlib.sha256(data).hexdigest()[:8]}"
    history = table.history("t")
    assert [h.version for h in history] == vids and [h.num_virtual_tokens for h in history] == [2, 3, 4]
    assert all(isinstance(h, VersionInfo) for h in history)
    assert table.describe() == [history[-1]]
    assert torch.equal(table.get("t", version=vids[0]).embeddings, prompts[0].embeddings)
    assert table.get("t", version=vids[0]).version == vids[0]
    assert torch.equal(table.get("t").embeddings, prompts[2].embeddings)
    with pytest.raises(PromptTableError, match="known versions") as e:
        table.get("t", version="v000009-deadbeef")
    assert all(v in str(e.value) for v in vids)


def test_failed_publish_leaves_the_table_as_before(tmp_path, monkeypatch):
    table = PromptTable(tmp_path)
    old = make_prompt("a", 3, seed=1)
    table.publish([old])
    manifest_before = (tmp_path / "manifest.json").read_bytes()

    def broken_swap(data, expected_etag):
        raise OSError("disk full")

    monkeypatch.setattr(table.store, "swap_manifest", broken_swap)
    with pytest.raises(OSError, match="disk full"):
        table.publish([make_prompt("a", 3, seed=2), make_prompt("b", 5, seed=3)])
    assert len(list((tmp_path / "objects").rglob("*.safetensors"))) == 3  # objects were written
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before
    assert table.tasks() == ["a"] and len(table.history("a")) == 1
    assert torch.equal(table.get("a").embeddings, old.embeddings)
    assert table.publish([make_prompt("b", 5, seed=3)])["b"].startswith("v000001-")


def _publisher(root: str, worker: int) -> None:
    table = PromptTable(root)
    for j in range(3):
        table.publish([make_prompt(f"w{worker}-t{j}", 1 + j, seed=100 * worker + j)])
    table.publish([make_prompt("shared", 2, seed=worker)])


def test_concurrent_publishers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_publisher, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    table = PromptTable(tmp_path)
    names = [f"w{w}-t{j}" for w in range(4) for j in range(3)]
    assert table.tasks() == sorted(names + ["shared"])
    for w in range(4):
        for j in range(3):
            got = table.get(f"w{w}-t{j}")
            assert torch.equal(got.embeddings, make_prompt("x", 1 + j, seed=100 * w + j).embeddings)
            assert [h.version for h in table.history(f"w{w}-t{j}")] == [got.version]
    shared = table.history("shared")
    assert [h.version[:7] for h in shared] == ["v000001", "v000002", "v000003", "v000004"]
    tensors = {tuple(table.get("shared", version=h.version).embeddings.flatten().tolist()) for h in shared}
    assert len(tensors) == 4
    assert json.loads((tmp_path / "manifest.json").read_text())["generation"] == 16


def test_corrupted_object_is_detected(tmp_path):
    table = PromptTable(tmp_path)
    vids = table.publish([make_prompt("good", 2, seed=1), make_prompt("bad", 2, seed=2)])
    path = tmp_path / table.history("bad")[0].object_key
    assert table.history("bad")[0].version == vids["bad"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PromptTableError, match="corrupt") as e:
        table.get("bad")
    assert "'bad'" in str(e.value) and vids["bad"] in str(e.value)
    assert table.get("good").version == vids["good"]  # other tasks' objects are not read


def test_base_model_mismatch(tmp_path):
    table = PromptTable(tmp_path)
    table.publish([make_prompt("t", 2)])
    assert table.get("t", base_model=fingerprint(name="renamed")).version  # the name alone does not count
    with pytest.raises(BaseModelMismatchError, match="embedding_sha256") as e:
        table.get("t", base_model=fingerprint(sha="cd" * 32))
    assert "task 't'" in str(e.value)
    with pytest.raises(BaseModelMismatchError, match="hidden_size"):
        table.get_many(["t"], base_model=fingerprint(hidden=32))


def test_validation_lists_every_problem_and_writes_nothing(tmp_path):
    root = tmp_path / "t"
    bad_rows = make_prompt("rows", 3)
    bad_rows.template["total_virtual_tokens"] = 4
    nan = make_prompt("nan", 2)
    nan.embeddings[0, 0] = float("nan")
    flat = make_prompt("flat", 2)
    flat.embeddings = torch.zeros(2 * HIDDEN)
    style = make_prompt("style", 2)
    style.style = "lora"
    prompts = [make_prompt("../escape", 2), bad_rows, nan, make_prompt("hidden", 2, hidden=8), flat,
               style, make_prompt("dup", 2), make_prompt("dup", 2)]
    prompts[3].base_model = fingerprint()
    with pytest.raises(ConfigError) as e:
        PromptTable(root).publish(prompts)
    problems = e.value.problems
    assert len(problems) == 7, problems
    for needle in ("not a safe name", "total_virtual_tokens is 4", "NaN", "hidden_size 16", "2-D",
                   "'lora'", "more than once"):
        assert any(needle in p for p in problems), needle
    assert not root.exists()


def test_missing_table_and_unknown_task(tmp_path):
    table = PromptTable(tmp_path / "nothing")
    with pytest.raises(PromptTableError, match="has no prompt table") as e:
        table.get("t")
    assert "model.prompt_table" in str(e.value) and "model.nemo_path" in str(e.value)
    assert not (tmp_path / "nothing").exists()
    table.publish([make_prompt("alpha", 1), make_prompt("beta", 1)])
    with pytest.raises(PromptTableError, match="known tasks: alpha, beta"):
        table.get("gamma")
    with pytest.raises(PromptTableError, match="'gamma'"):
        table.history("gamma")


def test_file_uri(tmp_path):
    vid = PromptTable(f"file://{tmp_path}/t").publish([make_prompt("t", 2, seed=4)])["t"]
    assert PromptTable(tmp_path / "t").get("t").version == vid
    got = PromptTable(f"file://{tmp_path}/t").get("t")
    assert torch.equal(got.embeddings, make_prompt("t", 2, seed=4).embeddings)
    with pytest.raises(PromptTableError, match="s3://BUCKET/PREFIX"):
        PromptTable("gs://bucket/table")


def test_local_store_cas_and_immutability(tmp_path):
    store = LocalStore(tmp_path)
    assert store.read_manifest() == (None, None)
    assert store.swap_manifest(b"one", expected_etag=None)
    data, etag = store.read_manifest()
    assert data == b"one" and etag == hashlib.sha256(b"one").hexdigest()
    assert not store.swap_manifest(b"two", expected_etag=None)
    assert store.swap_manifest(b"two", expected_etag=etag) and store.read_manifest()[0] == b"two"
    store.write_immutable("objects/x/v1.safetensors", b"abc")
    store.write_immutable("objects/x/v1.safetensors", b"abc")  # same bytes: a no-op
    with pytest.raises(PromptTableError, match="never overwritten"):
        store.write_immutable("objects/x/v1.safetensors", b"abd")
    assert store.read("objects/x/v1.safetensors") == b"abc"
    with pytest.raises(PromptTableError, match="invalid object key"):
        store.read("../outside")
