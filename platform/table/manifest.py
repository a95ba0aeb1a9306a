"""The prompt table's manifest as a dict, and the pure changes made to it (publish, rollback, delete).

{"format": "promptray-table/1", "generation": N, "updated_at": ISO,
 "tasks":    {taskname: VersionInfo}                current version of each live task
 "history":  {taskname: [version, ...]}             published versions, oldest first
 "versions": {taskname: {version: VersionInfo}}     every version ever published (never removed)
 "log":      {taskname: [{action, version, generation, at}, ...]}   publish / rollback / delete events}

A deleted task leaves `tasks` but keeps its history, versions and objects, so it can be rolled back.
Every change returns a new dict with the next generation; the caller swaps it in by compare-and-swap.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from promptray.platform.errors import PromptTableError

TABLE_FORMAT = "promptray-table/1"
ACTIONS = ("publish", "rollback", "delete")


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
        """The fields as stored in the manifest."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VersionInfo:
        """The inverse of `to_dict` (extra keys ignored; KeyError for a missing one)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TableEvent:
    """One change of a task in the table: it was published, rolled back to a version, or deleted."""
    taskname: str
    action: str  # "publish" | "rollback" | "delete"
    version: str  # the version published / made current / current when deleted
    generation: int  # manifest generation the change created
    at: str  # ISO-8601 UTC


def utcnow() -> str:
    """Now in UTC as ISO-8601 with microseconds and a "Z" suffix (every timestamp in a table)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def empty() -> dict:
    """The manifest of a table with no tasks yet (generation 0)."""
    return {"format": TABLE_FORMAT, "generation": 0, "updated_at": "", "tasks": {}, "history": {},
            "versions": {}, "log": {}}


def parse(data: bytes, where: str) -> dict:
    """The manifest in `data` (read from `where`), checked to be a prompt table manifest."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise PromptTableError(f"{where} is not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != TABLE_FORMAT:
        raise PromptTableError(f"{where} is not a {TABLE_FORMAT!r} manifest; is this a prompt table?")
    manifest.setdefault("log", {})  # tables written before the log existed
    return manifest


def dump(manifest: dict) -> bytes:
    """The manifest as the UTF-8 JSON bytes that are stored (sorted keys, so equal manifests are equal bytes)."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def next_version_number(manifest: dict, taskname: str) -> int:
    """1 + the number of versions `taskname` has ever had (deleted tasks' included)."""
    return len(manifest["versions"].get(taskname, {})) + 1


def _next(manifest: dict) -> tuple[dict, int, str]:
    new = json.loads(json.dumps(manifest))
    new["generation"] = int(manifest["generation"]) + 1
    new["updated_at"] = utcnow()
    return new, new["generation"], new["updated_at"]


def _log(new: dict, taskname: str, action: str, version: str) -> None:
    event = {"action": action, "version": version, "generation": new["generation"], "at": new["updated_at"]}
    new["log"].setdefault(taskname, []).append(event)


def with_published(manifest: dict, infos: list[VersionInfo]) -> dict:
    """`manifest` plus `infos` as the current versions of their tasks."""
    new, _, _ = _next(manifest)
    for info in infos:
        new["tasks"][info.taskname] = info.to_dict()
        new["history"].setdefault(info.taskname, []).append(info.version)
        new["versions"].setdefault(info.taskname, {})[info.version] = info.to_dict()
        _log(new, info.taskname, "publish", info.version)
    return new


def known_versions(manifest: dict, taskname: str) -> str:
    """The task's versions, oldest first, comma-separated for messages ("(none)" when it has none)."""
    return ", ".join(manifest["history"].get(taskname, [])) or "(none)"


def with_rollback(manifest: dict, taskname: str, version: str, where: str) -> dict | None:
    """`manifest` with `version` as the current version of `taskname` (None: it already is)."""
    versions = manifest["versions"].get(taskname)
    if not versions:
        raise PromptTableError(f"no task {taskname!r} in prompt table {where} (never published); "
                               f"known tasks: {', '.join(sorted(manifest['versions'])) or '(none)'}")
    if version not in versions:
        raise PromptTableError(f"task {taskname!r} has no version {version!r} in prompt table {where}; "
                               f"known versions: {known_versions(manifest, taskname)}")
    if manifest["tasks"].get(taskname, {}).get("version") == version:
        return None
    new, _, _ = _next(manifest)
    new["tasks"][taskname] = versions[version]
    _log(new, taskname, "rollback", version)
    return new


def with_deleted(manifest: dict, taskname: str, where: str) -> dict:
    """`manifest` without `taskname` among the current tasks (history, versions and objects kept)."""
    if taskname not in manifest["tasks"]:
        state = "was already deleted" if taskname in manifest["versions"] else "does not exist"
        raise PromptTableError(f"cannot delete task {taskname!r} from prompt table {where}: it {state}; "
                               f"current tasks: {', '.join(sorted(manifest['tasks'])) or '(none)'}")
    new, _, _ = _next(manifest)
    current = new["tasks"].pop(taskname)["version"]
    _log(new, taskname, "delete", current)
    return new


def deleted_tasks(manifest: dict) -> list[str]:
    """Tasks with versions but no current one (deleted, and restorable by rollback), sorted."""
    return sorted(set(manifest["versions"]) - set(manifest["tasks"]))


def events(manifest: dict, taskname: str) -> list[TableEvent]:
    """The task's publish, rollback and delete events, oldest first ([] for an unknown task)."""
    return [TableEvent(taskname=taskname, **e) for e in manifest["log"].get(taskname, [])]


def referenced_keys(manifest: dict) -> set[str]:
    """Object keys of every version the manifest knows (current, past and deleted tasks)."""
    return {info["object_key"] for versions in manifest["versions"].values() for info in versions.values()}
