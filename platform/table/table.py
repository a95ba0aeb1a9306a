"""Prompt table: taskname -> versioned soft prompt (embeddings + template + metadata).

Addressed by URI: a plain path or file://PATH (local folder) or s3://BUCKET/PREFIX (`storage/stores.py`). Layout,
the same on both: `manifest.json` (current version of each task, history, event log, generation; see
`manifest.py`) and immutable objects (tensor "embeddings" + JSON metadata "promptray") under content-addressed
keys `objects/<taskname>/<sha256>.safetensors` (tables written before: `objects/<taskname>/<version>.safetensors`;
the manifest records each version's key, so both read). A publish uploads each object once, before anything
else; every change (publish, rollback, delete) then compare-and-swaps the manifest on its etag and, on a
conflict, re-reads it and retries the swap alone, so readers see all of a change or none of it and concurrent
writers never lose each other's tasks. Objects are checked against the manifest's sha256 on read. No pickle
anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from promptray.platform.data.encoding import TokenizerFingerprint
from promptray.platform.errors import PromptTableError, TableConflictError
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.storage.base import MANIFEST_KEY, Store, StoredObject, sha256_hex  # noqa: F401
from promptray.platform.storage.stores import LocalStore, store_for_uri  # noqa: F401
from promptray.platform.table import manifest as tm
from promptray.platform.table.codec import (  # noqa: F401
    META_FIELDS,
    OBJECT_FORMAT,
    STYLES,
    TASKNAME_RE,
    TaskPrompt,
    decode_prompt,
    encode_prompt,
    validate_prompts,
)
from promptray.platform.table.manifest import TABLE_FORMAT, TableEvent, VersionInfo  # noqa: F401

MAX_PUBLISH_TRIES = 20  # manifest compare-and-swap attempts of one change
GC_GRACE_SECONDS = 3600  # gc never removes younger objects: they may belong to a publish in flight
HOW_TO_CREATE = "train a task with model.prompt_table=<path> (or model.nemo_path=<path>) to create one"
T = TypeVar("T")


def object_key(taskname: str, data: bytes) -> str:
    """The content-addressed key of a version's object: the same bytes always get the same key."""
    return f"objects/{taskname}/{sha256_hex(data)}.safetensors"


def _plan(manifest: dict, objects: dict[str, tuple[TaskPrompt, bytes]], keys: dict[str, str]) -> list[VersionInfo]:
    """VersionInfo of each object as the next version of its task in `manifest`, stored under `keys[taskname]`.
    The version id `v<number>-<sha8>` depends on `manifest`; the object key does not."""
    infos = []
    for name, (p, data) in objects.items():
        sha = sha256_hex(data)
        vid = f"v{tm.next_version_number(manifest, name):06d}-{sha[:8]}"
        infos.append(VersionInfo(taskname=name, version=vid, sha256=sha, style=p.style, object_key=keys[name],
                                 num_virtual_tokens=p.num_virtual_tokens, created_at=p.created_at))
    return infos


def _parallel(store: Store, fn: Callable[[T], object], items: list[T]) -> list:
    """[fn(x) for x in items], on a few threads where the store is remote."""
    n = min(int(getattr(store, "max_parallel_writes", 1)), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(n, thread_name_prefix="promptray-table") as pool:
        return list(pool.map(fn, items))


class PromptTable:
    """A versioned prompt table at a local path, file:// or s3:// URI (created on first publish).

    `endpoint_url` (s3:// only) overrides the endpoint boto3 finds itself (AWS_ENDPOINT_URL, profile).

    Holds only its `uri` and its `store` (storage/base.py's Store protocol: `LocalStore` or `S3Store`, chosen
    by `store_for_uri`); nothing is cached, every call reads the manifest anew. Prompts go in and out as
    `TaskPrompt`s (codec.py) whose `embeddings` are float32 CPU tensors (n_virtual, H).

    Errors, all PromptTableError subclasses or itself: PromptTableError (no table, unknown or deleted task,
    unknown version, missing or corrupted object), BaseModelMismatchError / TokenizerMismatchError (`get` with
    a fingerprint the prompt was not trained on), TableConflictError (the manifest changed MAX_PUBLISH_TRIES
    times under a change; nothing applied), StoreError and its subclasses (the storage failed).
    """

    def __init__(self, uri: str | os.PathLike, store: Store | None = None, *, endpoint_url: str | None = None):
        self.uri = os.fspath(uri)
        self.store: Store = store if store is not None else store_for_uri(uri, endpoint_url=endpoint_url)

    def _load_raw(self) -> tuple[bytes | None, dict | None, str | None]:
        """The manifest's bytes, parsed dict and etag (all None when there is no table)."""
        data, etag = self.store.read_manifest()
        if data is None:
            return None, None, None
        return data, tm.parse(data, f"{self.store.location()}/{MANIFEST_KEY}"), etag

    def _load(self) -> tuple[dict | None, str | None]:
        _, manifest, etag = self._load_raw()
        return manifest, etag

    def _no_table(self) -> PromptTableError:
        return PromptTableError(f"{self.store.location()} has no prompt table (no {MANIFEST_KEY}); "
                                f"{HOW_TO_CREATE}")

    def _manifest(self) -> dict:
        manifest, _ = self._load()
        if manifest is None:
            raise self._no_table()
        return manifest

    def _update(self, change: Callable[[dict], dict | None], create: bool = False) -> dict:
        """Swap in change(current manifest) by compare-and-swap, re-reading and re-applying on conflict;
        returns the manifest in force afterwards (`change` returns None: nothing to do)."""
        sent = None
        for attempt in range(MAX_PUBLISH_TRIES):
            raw, manifest, etag = self._load_raw()
            if sent is not None and raw == sent:  # our last swap did land; only its answer was lost
                return manifest
            if manifest is None and not create:
                raise self._no_table()
            new = change(manifest or tm.empty())
            if new is None:
                return manifest
            sent = tm.dump(new)
            if self.store.swap_manifest(sent, etag):
                return new
            time.sleep(random.uniform(0, min(1.0, 0.005 * 2 ** attempt)))
        raise TableConflictError(f"could not update prompt table {self.store.location()}: the manifest "
                                 f"changed {MAX_PUBLISH_TRIES} times under us; nothing was applied, try again")

    def exists(self) -> bool:
        """Whether the table has a manifest (a table is created by its first publish)."""
        return self._load()[0] is not None

    def tasks(self, include_deleted: bool = False) -> list[str]:
        """Current tasks (with `include_deleted`, also deleted ones that can be rolled back)."""
        manifest = self._load()[0] or tm.empty()
        return sorted(manifest["versions"] if include_deleted else manifest["tasks"])

    def deleted_tasks(self) -> list[str]:
        """Tasks that were deleted and can be rolled back (`rollback`); [] when there is no table."""
        return tm.deleted_tasks(self._load()[0] or tm.empty())

    def _unknown(self, manifest: dict, taskname: str) -> PromptTableError:
        where = self.store.location()
        if taskname in manifest["versions"]:
            return PromptTableError(f"task {taskname!r} was deleted from prompt table {where}; restore it with "
                                    f"rollback to one of its versions: {tm.known_versions(manifest, taskname)}")
        known = ", ".join(sorted(manifest["tasks"])) or "(none)"
        return PromptTableError(f"no task {taskname!r} in prompt table {where}; known tasks: {known}")

    def _info(self, manifest: dict, taskname: str, version: str | None) -> VersionInfo:
        if taskname not in (manifest["versions"] if version else manifest["tasks"]):
            raise self._unknown(manifest, taskname)
        if version is None:
            return VersionInfo.from_dict(manifest["tasks"][taskname])
        versions = manifest["versions"][taskname]
        if version not in versions:
            raise PromptTableError(f"task {taskname!r} has no version {version!r} in prompt table "
                                   f"{self.store.location()}; known versions: "
                                   f"{tm.known_versions(manifest, taskname)}")
        return VersionInfo.from_dict(versions[version])

    def _fetch(self, info: VersionInfo) -> bytes:
        """The bytes of a version's object, checked against the manifest's sha256."""
        what = f"object {info.object_key} of task {info.taskname!r} version {info.version!r}"
        data = self.store.read(info.object_key)
        if data is None:
            raise PromptTableError(f"{what} is missing from prompt table {self.store.location()}")
        if sha256_hex(data) != info.sha256:
            raise PromptTableError(f"{what} in prompt table {self.store.location()} is corrupted: its "
                                   f"sha256 {sha256_hex(data)} does not match the manifest's {info.sha256}; "
                                   f"roll the task back to another version or re-publish it")
        return data

    def _read(self, info: VersionInfo, base_model: BaseModelFingerprint | None,
              tokenizer: TokenizerFingerprint | None = None) -> TaskPrompt:
        prompt = decode_prompt(self._fetch(info), version=info.version)
        prompt.check_against(base_model, tokenizer)
        return prompt

    def get(self, taskname: str, version: str | None = None, base_model: BaseModelFingerprint | None = None,
            *, tokenizer: TokenizerFingerprint | None = None) -> TaskPrompt:
        """One task's prompt (current version unless `version`), checked against `base_model`
        (BaseModelMismatchError) and `tokenizer` (encoding.TokenizerMismatchError) when given.
        Reads the manifest and that one object only."""
        return self._read(self._info(self._manifest(), taskname, version), base_model, tokenizer)

    def get_many(self, tasknames: Iterable[str], base_model: BaseModelFingerprint | None = None,
                 *, tokenizer: TokenizerFingerprint | None = None) -> dict[str, TaskPrompt]:
        """Current prompts of several tasks, read against one manifest (checked as in `get`)."""
        manifest = self._manifest()
        infos = [self._info(manifest, name, None) for name in tasknames]
        return {info.taskname: self._read(info, base_model, tokenizer) for info in infos}

    def _upload(self, objects: dict[str, tuple[TaskPrompt, bytes]]) -> dict[str, str]:
        """Write each object once, under its content-addressed key; returns taskname -> key written.
        An object the manifest already refers to is not written again."""
        manifest = self._load()[0] or tm.empty()
        referenced = tm.referenced_keys(manifest)

        def put(name: str) -> tuple[str, str]:
            data = objects[name][1]
            key = object_key(name, data)
            if key not in referenced and not self.store.write_immutable(key, data):
                # the same bytes were left by an earlier publish that did not land (or one landing now): write
                # a fresh copy so its age protects it from gc until the manifest refers to it
                key = f"objects/{name}/{sha256_hex(data)}-{uuid.uuid4().hex[:8]}.safetensors"
                self.store.write_immutable(key, data)
            return name, key
        return dict(_parallel(self.store, put, list(objects)))

    def publish(self, prompts: Iterable[TaskPrompt]) -> dict[str, str]:
        """Publish new versions of tasks, all or nothing; returns taskname -> new version id.

        Each object is uploaded once, before the manifest's compare-and-swap; a conflict re-plans the version
        ids against the new manifest and swaps again without uploading anything. A publish that fails leaves
        its objects unreferenced, for `gc`."""
        prompts = list(prompts)
        validate_prompts(prompts)
        now = tm.utcnow()
        prompts = [dataclasses.replace(p, created_at=p.created_at or now, version=None) for p in prompts]
        objects = {p.taskname: (p, encode_prompt(p)) for p in prompts}
        keys = self._upload(objects)
        planned: list[VersionInfo] = []

        def change(manifest: dict) -> dict:
            planned[:] = _plan(manifest, objects, keys)
            return tm.with_published(manifest, planned)

        self._update(change, create=True)
        return {info.taskname: info.version for info in planned}

    def rollback(self, taskname: str, version: str) -> VersionInfo:
        """Make an earlier `version` of a task (deleted or not) its current one; logged as "rollback"."""
        where = self.store.location()
        manifest = self._update(lambda m: tm.with_rollback(m, taskname, version, where))
        return VersionInfo.from_dict(manifest["tasks"][taskname])

    def delete(self, taskname: str) -> VersionInfo:
        """Remove a task from the current tasks; its history, versions and objects stay (see rollback).
        Returns the version that was current."""
        where = self.store.location()
        manifest = self._update(lambda m: tm.with_deleted(m, taskname, where))
        return VersionInfo.from_dict(manifest["versions"][taskname][manifest["log"][taskname][-1]["version"]])

    def history(self, taskname: str) -> list[VersionInfo]:
        """Every published version of a task (also of a deleted one), oldest first."""
        manifest = self._manifest()
        if taskname not in manifest["versions"]:
            raise self._unknown(manifest, taskname)
        versions = manifest["versions"][taskname]
        return [VersionInfo.from_dict(versions[v]) for v in manifest["history"][taskname]]

    def log(self, taskname: str) -> list[TableEvent]:
        """What happened to a task, oldest first: publish, rollback and delete events."""
        manifest = self._manifest()
        if taskname not in manifest["versions"]:
            raise self._unknown(manifest, taskname)
        return tm.events(manifest, taskname)

    def describe(self) -> list[VersionInfo]:
        """Current version of each task, by taskname."""
        manifest = self._load()[0] or tm.empty()
        return [VersionInfo.from_dict(manifest["tasks"][name]) for name in sorted(manifest["tasks"])]

    def gc(self, dry_run: bool = False, grace_seconds: float = GC_GRACE_SECONDS) -> list[str]:
        """Delete objects that no version in the manifest refers to (left by failed or conflicting
        publishes) and that are older than `grace_seconds`, so a publish in flight keeps its objects.
        Returns the keys removed (with `dry_run`, those that would be)."""
        keep = tm.referenced_keys(self._manifest())
        cutoff = time.time() - grace_seconds
        doomed = [o.key for o in self.store.list_objects("objects/")
                  if o.key not in keep and o.modified <= cutoff]
        if not dry_run:
            _parallel(self.store, self.store.delete, doomed)
        return doomed


def copy_table(src: str | os.PathLike | PromptTable, dst: str | os.PathLike | PromptTable) -> int:
    """Copy table `src` with every version of every task into `dst`, which must hold no table yet (e.g. a
    local table to s3://...); the copy reads the same. Objects are verified on the way; returns how many."""
    src_t = src if isinstance(src, PromptTable) else PromptTable(src)
    dst_t = dst if isinstance(dst, PromptTable) else PromptTable(dst)
    raw, manifest, _ = src_t._load_raw()
    if manifest is None:
        raise src_t._no_table()
    if dst_t.exists():
        raise PromptTableError(f"cannot copy into {dst_t.store.location()}: it already holds a prompt table; "
                               f"copy into an empty location")
    infos = [VersionInfo.from_dict(i) for versions in manifest["versions"].values() for i in versions.values()]
    _parallel(dst_t.store, lambda info: dst_t.store.write_immutable(info.object_key, src_t._fetch(info)), infos)
    if not dst_t.store.swap_manifest(raw, None):
        raise TableConflictError(f"{dst_t.store.location()} got a prompt table while copying into it; its "
                                 f"manifest was left as it is")
    return len(infos)
