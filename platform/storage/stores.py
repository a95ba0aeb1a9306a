"""Where a prompt table lives: a local folder (a plain path or file://PATH, `LocalStore`) or an S3 prefix
(s3://BUCKET/PREFIX, `s3.S3Store`); `store_for_uri` picks one.

A store holds immutable objects (created once, never overwritten) and one mutable manifest that is only
ever replaced by a compare-and-swap on its etag (`base.Store`): `rename` under a lock on a local disk, a
conditional PutObject (If-Match on the etag, If-None-Match: * for the first one) on S3.
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from pathlib import Path

from promptray.platform.errors import PromptTableError
from promptray.platform.storage.base import MANIFEST_KEY, Store, StoredObject, check_key, sha256_hex
from promptray.platform.storage.s3 import S3Store  # boto3 itself is imported only when a client is made


def _atomic_write(path: Path, data: bytes, exclusive: bool = False) -> bool:
    """Write `data` to `path` through a temp file in the same folder; with `exclusive`, only if `path` is
    absent (False when it exists), else replacing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic create-if-absent
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: best effort
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


class LocalStore:
    """Store on a local directory; the manifest etag is the sha256 of its bytes (None when absent)."""

    LOCK_NAME = ".manifest.lock"
    max_parallel_writes = 1

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def location(self) -> str:
        """The table's folder."""
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key, str(self.root)).split("/"))

    def read(self, key: str) -> bytes | None:
        """The file's bytes; None when it does not exist."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_immutable(self, key: str, data: bytes) -> bool:
        """Create `key`; False when it already holds `data`, an error when it holds other bytes."""
        if _atomic_write(self._path(key), data, exclusive=True):
            return True
        if self.read(key) != data:
            raise PromptTableError(f"object {key!r} in prompt table {self.root} already exists with "
                                   f"other content; objects are never overwritten")
        return False

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        """(manifest bytes, their sha256 as the etag); (None, None) without a manifest."""
        data = self.read(MANIFEST_KEY)
        return data, (None if data is None else sha256_hex(data))

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

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Files under `prefix` (the swap's lock file left out), sorted by key; `modified` is the file's mtime."""
        out = []
        for dirpath, _, files in os.walk(self.root / prefix):
            for name in files:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key != self.LOCK_NAME and key.startswith(prefix):
                    st = path.stat()
                    out.append(StoredObject(key=key, size=st.st_size, modified=st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        """Remove the file (no error when it is absent)."""
        self._path(key).unlink(missing_ok=True)


def store_for_uri(uri: str | os.PathLike, *, endpoint_url: str | None = None) -> Store:
    """Store of a plain path, a file:// URI or an s3://BUCKET/PREFIX URI. `endpoint_url` (S3 only): the
    S3-compatible server to use; None: whatever boto3 finds itself (AWS_ENDPOINT_URL, the profile), else AWS."""
    s = os.fspath(uri)
    if s.startswith("s3://"):
        bucket, _, prefix = s[len("s3://"):].partition("/")
        if not bucket:
            raise PromptTableError(f"prompt table URI {s!r} names no bucket; use s3://BUCKET/PREFIX")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url)
    if s.startswith("file://"):
        s = s[len("file://"):]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s):
        raise PromptTableError(f"prompt table URI {s!r}: use a local path, file://PATH or s3://BUCKET/PREFIX")
    if not s:
        raise PromptTableError(f"prompt table URI {os.fspath(uri)!r} names no path")
    return LocalStore(Path(s).expanduser())
