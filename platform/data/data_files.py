"""Do a config's data files exist? One check for every entry point (train, the Ray jobs, the SDK).

Local files are checked with the config (`load_config(..., check_files=True)`), so a missing file is one more
problem of the same report. s3:// objects are checked when a run starts, before the base model loads
(`remote_data_problems`): one listing request per file, no download.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

DATA_KEYS = ("train_ds", "validation_ds")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path: Any) -> bool:
    """A local path (or file:// URI), as opposed to s3:// and other URIs; inline records are not paths."""
    return isinstance(path, str) and (path.startswith("file://") or not _URI_SCHEME.match(path))


def local_path(path: str, base: Optional[Path] = None) -> Path:
    """The file a local data entry names; relative paths are read from `base` (default: the working dir)."""
    p = Path(path.removeprefix("file://")).expanduser()
    return p if p.is_absolute() else (base or Path(os.getcwd())) / p


def data_entries(raw: dict) -> Iterator[tuple[str, int, Any]]:
    """(data key, index, entry) of every train / validation entry of a config dict (paths or records)."""
    model = raw.get("model") if isinstance(raw, dict) else None
    data = model.get("data") if isinstance(model, dict) else None
    for key in DATA_KEYS:
        entries = data.get(key) if isinstance(data, dict) else None
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            yield key, i, entry


def data_file_problems(raw: dict, base: Optional[Path] = None) -> list[str]:
    """Every local data file of a config dict that does not exist, named by key, index and path."""
    where = base or Path(os.getcwd())
    return [f"model.data.{key}[{i}]: file {entry!r} does not exist; fix the path (relative paths are read from "
            f"{where})" for key, i, entry in data_entries(raw)
            if is_local(entry) and not local_path(entry, base).is_file()]


def remote_data_problems(raw: dict, endpoint_url: Optional[str] = None) -> list[str]:
    """Every s3:// data object of a config dict that does not exist (store errors raise as StoreError)."""
    remote = [(key, i, e) for key, i, e in data_entries(raw) if isinstance(e, str) and e.startswith("s3://")]
    if not remote:
        return []
    from promptray.platform.storage.s3 import uri_exists  # boto3 only when S3 is used

    return [f"model.data.{key}[{i}]: object {entry!r} does not exist; check the bucket and key"
            for key, i, entry in remote if not uri_exists(entry, endpoint_url=endpoint_url)]
