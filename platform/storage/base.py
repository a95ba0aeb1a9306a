"""What every store of a prompt table is: the `Store` protocol, the listing entry and the key rules shared by
the local (`stores.py`) and S3 (`s3.py`) backends. Both import from here; nothing here imports them.

A store holds immutable objects (created once, never overwritten) and one mutable manifest that is only
ever replaced by a compare-and-swap on its etag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from promptray.platform.errors import PromptTableError

MANIFEST_KEY = "manifest.json"


@dataclass(frozen=True)
class StoredObject:
    """One object of a store, as listed."""
    key: str  # relative to the table's root
    size: int
    modified: float  # POSIX seconds


class Store(Protocol):
    """What a prompt table needs from its storage. Keys are relative to the table's root ("objects/x/....").
    Failures of the storage itself raise StoreError subclasses (PromptTableError)."""

    def location(self) -> str:
        """Where the table is, for messages: a folder path or s3://bucket[/prefix]."""
        ...

    def read(self, key: str) -> bytes | None:
        """The object's bytes; None when the key is absent."""
        ...

    def write_immutable(self, key: str, data: bytes) -> bool:
        """Create `key` with `data`: True when created, False when the same bytes were already there;
        PromptTableError when it holds other bytes (objects are never overwritten)."""
        ...

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        """(the manifest's bytes, its etag); (None, None) when there is no manifest."""
        ...

    def swap_manifest(self, data: bytes, expected_etag: str | None) -> bool:
        """Replace the manifest with `data` if its etag is still `expected_etag` (None: if there is none);
        False on a conflict, nothing written."""
        ...

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object whose key starts with `prefix`, sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (no error when it is absent)."""
        ...


def sha256_hex(data: bytes) -> str:
    """The sha256 of `data` as 64 lowercase hex digits (object keys and the manifest's checksums)."""
    return hashlib.sha256(data).hexdigest()


def check_key(key: str, where: str) -> str:
    """`key` when it is a relative key of plain path segments; else PromptTableError naming `where`."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PromptTableError(f"invalid object key {key!r} in prompt table {where}")
    return key
