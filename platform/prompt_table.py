"""Prompt table: taskname -> versioned soft prompt (embeddings + template + metadata).

Layout (the same on a local disk and, later, on an object store): `manifest.json` (current version of
each task, history, generation) and immutable `objects/<taskname>/<version>.safetensors` (tensor
"embeddings" + JSON metadata "promptray"). A publish writes its objects, then compare-and-swaps the
manifest on its etag, so readers see all of a publish or none of it. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import random
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from promptray.platform.errors import ConfigError, PromptTableError
from promptray.platform.fingerprint import BaseModelFingerprint

TABLE_FORMAT = "promptray-table/1"
OBJECT_FORMAT = "promptray-prompt/1"
MANIFEST_KEY = "manifest.json"
STYLES = ("prompt-tuning", "p-tuning", "imported")
TASKNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_PUBLISH_TRIES = 20
META_FIELDS = ("taskname", "template", "style", "metrics", "source", "created_at")  # object metadata
HOW_TO_CREATE = "train a task with model.prompt_table=<path> (or model.nemo_path=<path>) to create one"


@dataclass
class TaskPrompt:
    """One task's soft prompt with everything needed to use it."""
    taskname: str
    embeddings: torch.Tensor  # (n_virtual, hidden) float32, CPU
    template: dict
    style: str  # "prompt-tuning" | "p-tuning" | "imported"
    base_model: BaseModelFingerprint
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    created_at: str = ""  # ISO-8601 UTC; filled at publish time if empty
    version: str | None = None  # set when read from a table

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class VersionInfo:
    """Manifest entry of one published version of a task."""
    taskname: str
    version: str
    object_key: str
    sha256: str
    num_virtual_tokens: int
    style: str
    created_at: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VersionInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class Store(Protocol):
    """What a table needs from its storage; a local directory here, an S3 bucket later."""
    def location(self) -> str: ...
    def read(self, key: str) -> bytes | None: ...  # None when the key is absent
    def write_immutable(self, key: str, data: bytes) -> None: ...  # never overwrites other bytes
    def read_manifest(self) -> tuple[bytes | None, str | None]: ...  # (bytes, etag)
    def swap_manifest(self, data: bytes, expected_etag: str | None) -> bool: ...  # False: conflict


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalStore:
    """Store on a local directory; the manifest etag is the sha256 of its bytes (None when absent)."""

    LOCK_NAME = ".manifest.lock"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def location(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise PromptTableError(f"invalid object key {key!r} in prompt table {self.root}")
        return self.root.joinpath(*parts)

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_immutable(self, key: str, data: bytes) -> None:
        """Create `key`; a no-op when it already holds `data`, an error when it holds other bytes."""
        existing = self.read(key)
        if existing is None:
            _atomic_write(self._path(key), data)
        elif existing != data:
            raise PromptTableError(f"object {key!r} in prompt table {self.root} already exists with "
                                   f"other content; objects are never overwritten")

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        data = self.read(MANIFEST_KEY)
        return data, (None if data is None else _sha256(data))

    def swap_manifest(self, data: bytes, expected_etag: str | None) -> bool:
        """Replace the manifest if its etag is still `expected_etag`; False on conflict."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / self.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.read_manifest()[1] != expected_etag:
                return False
            _atomic_write(self._path(MANIFEST_KEY), data)
            return True
        finally:
            os.close(fd)  # releases the lock


def store_for_uri(uri: str | os.PathLike) -> LocalStore:
    """Store of a plain path or a file:// URI."""
    s = os.fspath(uri)
    if s.startswith("file://"):
        s = s[len("file://"):]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s):
        raise PromptTableError(f"prompt table URI {s!r}: only local paths and file:// URIs are supported")
    if not s:
        raise PromptTableError(f"prompt table URI {os.fspath(uri)!r} names no path")
    return LocalStore(Path(s).expanduser())


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tensor_problems(p: TaskPrompt, where: str) -> list[str]:
    emb = p.embeddings
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not emb.is_floating_point():
        got = (f"shape {tuple(emb.shape)} {emb.dtype}" if isinstance(emb, torch.Tensor)
               else type(emb).__name__)
        return [f"{where}: embeddings must be a 2-D float tensor (n_virtual, hidden), got {got}"]
    problems = []
    rows = p.template.get("total_virtual_tokens") if isinstance(p.template, dict) else None
    if emb.shape[0] != rows:
        problems.append(f"{where}: embeddings have {emb.shape[0]} rows but template "
                        f"total_virtual_tokens is {rows!r}; they must be equal")
    hidden = getattr(p.base_model, "hidden_size", None)
    if emb.shape[1] != hidden:
        problems.append(f"{where}: embeddings hidden size {emb.shape[1]} != base model hidden_size {hidden!r}")
    if emb.numel() and not bool(torch.isfinite(emb.detach().float()).all()):
        problems.append(f"{where}: embeddings contain NaN or infinite values; re-train the task")
    return problems


def _is_json_dict(value: object) -> bool:
    try:
        return isinstance(value, dict) and bool(json.dumps(value))
    except (TypeError, ValueError):
        return False


def _field_problems(p: TaskPrompt, where: str) -> list[str]:
    problems = []
    if not isinstance(p.taskname, str) or not TASKNAME_RE.fullmatch(p.taskname):
        problems.append(f"{where}: taskname {p.taskname!r} is not a safe name; use 1-128 of "
                        f"letters, digits, '_', '.', '-', starting with a letter or digit")
    if p.style not in STYLES:
        problems.append(f"{where}: style {p.style!r} is not one of {', '.join(STYLES)}")
    if not isinstance(p.base_model, BaseModelFingerprint):
        problems.append(f"{where}: base_model must be a BaseModelFingerprint, got {type(p.base_model).__name__}")
    if isinstance(p.template, dict) and p.template.get("taskname", p.taskname) != p.taskname:
        problems.append(f"{where}: template taskname {p.template['taskname']!r} != {p.taskname!r}")
    for name in ("template", "metrics", "source"):
        if not _is_json_dict(getattr(p, name)):
            problems.append(f"{where}: {name} must be a JSON-able dict")
    return problems


def validate_prompts(prompts: list[TaskPrompt]) -> None:
    """Raise ConfigError listing every problem of a publish, or return."""
    problems: list[str] = [] if prompts else ["nothing to publish: pass at least one TaskPrompt"]
    seen: set[str] = set()
    for i, p in enumerate(prompts):
        where = f"prompt #{i} ({getattr(p, 'taskname', '?')!r})"
        if not isinstance(p, TaskPrompt):
            problems.append(f"{where}: expected a TaskPrompt, got {type(p).__name__}")
            continue
        problems += _field_problems(p, where) + _tensor_problems(p, where)
        if isinstance(p.taskname, str) and p.taskname in seen:
            problems.append(f"{where}: taskname {p.taskname!r} appears more than once in one publish")
        seen.add(str(p.taskname))
    if problems:
        raise ConfigError(problems, title="cannot publish prompts")


def encode_prompt(p: TaskPrompt) -> bytes:
    """safetensors bytes of a prompt: tensor "embeddings" + JSON metadata under "promptray"."""
    meta = {k: getattr(p, k) for k in META_FIELDS}
    meta.update(format=OBJECT_FORMAT, base_model=p.base_model.to_dict())
    emb = p.embeddings.detach().to("cpu", torch.float32).contiguous()
    return st_save({"embeddings": emb}, metadata={"promptray": json.dumps(meta, sort_keys=True)})


def decode_prompt(data: bytes, version: str | None = None) -> TaskPrompt:
    """Inverse of encode_prompt."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["promptray"])
        fields = {k: meta[k] for k in META_FIELDS}
        base_model = BaseModelFingerprint.from_dict(meta["base_model"])
        emb = st_load(data)["embeddings"]
    except Exception as e:  # any malformed object
        raise PromptTableError(f"prompt object is unreadable ({type(e).__name__}: {e})") from e
    return TaskPrompt(embeddings=emb, base_model=base_model, version=version, **fields)


def _empty_manifest() -> dict:
    return {"format": TABLE_FORMAT, "generation": 0, "updated_at": "", "tasks": {}, "history": {},
            "versions": {}}


def _merge(manifest: dict, infos: list[VersionInfo]) -> dict:
    """A new manifest: `manifest` plus `infos` as the current versions of their tasks."""
    new = json.loads(json.dumps(manifest))
    for info in infos:
        new["tasks"][info.taskname] = info.to_dict()
        new["history"].setdefault(info.taskname, []).append(info.version)
        new["versions"].setdefault(info.taskname, {})[info.version] = info.to_dict()
    new["generation"] = int(manifest["generation"]) + 1
    new["updated_at"] = _utcnow()
    return new


def _plan(manifest: dict, objects: dict[str, tuple[TaskPrompt, bytes]]) -> list[VersionInfo]:
    """VersionInfo of each object as the next version of its task in `manifest`."""
    infos = []
    for name, (p, data) in objects.items():
        sha = _sha256(data)
        vid = f"v{len(manifest['history'].get(name, [])) + 1:06d}-{sha[:8]}"
        infos.append(VersionInfo(taskname=name, version=vid, sha256=sha, style=p.style,
                                 object_key=f"objects/{name}/{vid}.safetensors",
                                 num_virtual_tokens=p.num_virtual_tokens, created_at=p.created_at))
    return infos


class PromptTable:
    """A versioned prompt table at a local path or file:// URI (created on first publish)."""

    def __init__(self, uri: str | os.PathLike, store: Store | None = None):
        self.uri = os.fspath(uri)
        self.store: Store = store if store is not None else store_for_uri(uri)

    def _load(self) -> tuple[dict | None, str | None]:
        """The parsed manifest (None when absent) and its etag."""
        data, etag = self.store.read_manifest()
        if data is None:
            return None, None
        where = f"{self.store.location()}/{MANIFEST_KEY}"
        try:
            manifest = json.loads(data)
        except ValueError as e:
            raise PromptTableError(f"{where} is not JSON: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != TABLE_FORMAT:
            raise PromptTableError(f"{where} is not a {TABLE_FORMAT!r} manifest; is this a prompt table?")
        return manifest, etag

    def _manifest(self) -> dict:
        manifest, _ = self._load()
        if manifest is None:
            raise PromptTableError(f"{self.store.location()} has no prompt table (no {MANIFEST_KEY}); "
                                   f"{HOW_TO_CREATE}")
        return manifest

    def exists(self) -> bool:
        return self._load()[0] is not None

    def tasks(self) -> list[str]:
        return sorted((self._load()[0] or _empty_manifest())["tasks"])

    def _info(self, manifest: dict, taskname: str, version: str | None) -> VersionInfo:
        if taskname not in manifest["tasks"]:
            known = ", ".join(sorted(manifest["tasks"])) or "(none)"
            raise PromptTableError(f"no task {taskname!r} in prompt table {self.store.location()}; "
                                   f"known tasks: {known}")
        if version is None:
            return VersionInfo.from_dict(manifest["tasks"][taskname])
        versions = manifest["versions"].get(taskname, {})
        if version not in versions:
            known = ", ".join(manifest["history"].get(taskname, [])) or "(none)"
            raise PromptTableError(f"task {taskname!r} has no version {version!r} in prompt table "
                                   f"{self.store.location()}; known versions: {known}")
        return VersionInfo.from_dict(versions[version])

    def _read(self, info: VersionInfo, base_model: BaseModelFingerprint | None) -> TaskPrompt:
        what = f"object {info.object_key} of task {info.taskname!r} version {info.version!r}"
        data = self.store.read(info.object_key)
        if data is None:
            raise PromptTableError(f"{what} is missing from prompt table {self.store.location()}")
        if _sha256(data) != info.sha256:
            raise PromptTableError(f"{what} is corrupted: its sha256 {_sha256(data)} does not match "
                                   f"the manifest's {info.sha256}; re-publish the task")
        prompt = decode_prompt(data, version=info.version)
        if base_model is not None:
            prompt.base_model.check_compatible(base_model, what=f"task {info.taskname!r}")
        return prompt

    def get(self, taskname: str, version: str | None = None,
            base_model: BaseModelFingerprint | None = None) -> TaskPrompt:
        """One task's prompt (current version unless `version`), checked against `base_model`."""
        return self._read(self._info(self._manifest(), taskname, version), base_model)

    def get_many(self, tasknames: Iterable[str],
                 base_model: BaseModelFingerprint | None = None) -> dict[str, TaskPrompt]:
        """Current prompts of several tasks, read against one manifest."""
        manifest = self._manifest()
        infos = [self._info(manifest, name, None) for name in tasknames]
        return {info.taskname: self._read(info, base_model) for info in infos}

    def publish(self, prompts: Iterable[TaskPrompt]) -> dict[str, str]:
        """Publish new versions of tasks, all or nothing; returns taskname -> new version id."""
        prompts = list(prompts)
        validate_prompts(prompts)
        now = _utcnow()
        prompts = [dataclasses.replace(p, created_at=p.created_at or now, version=None) for p in prompts]
        objects = {p.taskname: (p, encode_prompt(p)) for p in prompts}
        for attempt in range(MAX_PUBLISH_TRIES):
            manifest, etag = self._load()
            manifest = manifest or _empty_manifest()
            infos = _plan(manifest, objects)
            for info in infos:
                self.store.write_immutable(info.object_key, objects[info.taskname][1])
            if self.store.swap_manifest(_dump(_merge(manifest, infos)), etag):
                return {info.taskname: info.version for info in infos}
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise PromptTableError(f"could not publish to prompt table {self.store.location()}: the "
                               f"manifest changed {MAX_PUBLISH_TRIES} times under us; try again")

    def history(self, taskname: str) -> list[VersionInfo]:
        """Every version of a task, oldest first."""
        manifest = self._manifest()
        self._info(manifest, taskname, None)
        versions = manifest["versions"][taskname]
        return [VersionInfo.from_dict(versions[v]) for v in manifest["history"][taskname]]

    def describe(self) -> list[VersionInfo]:
        """Current version of each task, by taskname."""
        manifest = self._load()[0] or _empty_manifest()
        return [VersionInfo.from_dict(manifest["tasks"][name]) for name in sorted(manifest["tasks"])]


def _dump(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
