"""Making a job's files readable where it runs.

On the client's own machine (a loopback address, or the embedded cluster) relative paths are made absolute
against the client's working directory, since the job runs in a different one. A remote cluster cannot
read the client's disk: local data files are uploaded to the table's bucket, content-addressed, at
`s3://BUCKET/PREFIX/_staging/<sha256[:16]>/<file name>` (the table's gc only touches `objects/`), and the
config points at them; without an s3:// table they are rejected with a message that says what to do.
`s3://` data is passed through untouched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import urlsplit

from promptray.platform.data.data_files import data_entries, is_local, local_path
from promptray.platform.errors import PromptTableError
from promptray.sdk.errors import DataStagingError

log = logging.getLogger(__name__)
StageMode = Literal["auto", "always", "never"]
STAGING_PREFIX = "_staging"


def is_loopback(address: str) -> bool:
    """Whether a cluster address (http://HOST:PORT) is on this machine's loopback interface."""
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def data_files(raw: dict) -> list[tuple[str, int, str]]:
    """(data key, index, path) of every local data file the config names (inline records excluded)."""
    return [(key, i, src) for key, i, src in data_entries(raw) if is_local(src)]


def absolutize(raw: dict, base: Path) -> None:
    """Relative local paths of the config (data, tables, run dir, a local base model folder) -> absolute."""
    model, em = raw.setdefault("model", {}), raw.get("exp_manager")
    em = raw["exp_manager"] = em if isinstance(em, dict) else {}  # `exp_manager: ...` means the defaults
    for key, i, path in data_files(raw):
        model["data"][key][i] = str(local_path(path, base))
    for key in ("nemo_path", "prompt_table", "restore_path"):
        if is_local(model.get(key)):
            model[key] = str(local_path(model[key], base))
    lm = model.get("language_model_path")
    if isinstance(lm, str) and not Path(lm).is_absolute() and (base / lm).exists():
        model["language_model_path"] = str(base / lm)
    for key in ("exp_dir", "explicit_log_dir"):
        if is_local(em.get(key)):
            em[key] = str(local_path(em[key], base))
    if not em.get("exp_dir") and not em.get("explicit_log_dir"):
        em["exp_dir"] = str(base / "runs")


def stage_to_table(raw: dict, table: Optional[str], base: Path, address: str,
                   endpoint_url: Optional[str]) -> list[str]:
    """Upload the config's local data files next to the s3:// `table` and point the config at them.
    Returns the staged URIs. Raises DataStagingError when there is no bucket or an upload fails."""
    files = data_files(raw)
    if not files:
        return []
    if not (table or "").startswith("s3://"):
        names = ", ".join(repr(p) for _, _, p in files)
        raise DataStagingError(
            f"the cluster at {address} is remote and cannot read the local data files {names}, and the prompt "
            f"table {table!r} is not on s3://, so there is no bucket to stage them to. Upload them to s3:// "
            "yourself and list the s3:// URIs, use a table on s3://BUCKET/PREFIX (files are then staged "
            "to BUCKET/PREFIX/_staging/), or pass Client(stage_files='never') if the paths exist on the cluster")
    return [_stage_one(raw, key, i, local_path(path, base), table, endpoint_url) for key, i, path in files]


def _stage_one(raw: dict, key: str, i: int, path: Path, table: str, endpoint_url: Optional[str]) -> str:
    from promptray.platform.storage.stores import store_for_uri

    data = path.read_bytes()
    object_key = f"{STAGING_PREFIX}/{hashlib.sha256(data).hexdigest()[:16]}/{path.name}"
    try:
        store = store_for_uri(table, endpoint_url=endpoint_url)
        store.write_immutable(object_key, data)
    except PromptTableError as e:
        raise DataStagingError(f"could not stage {str(path)!r} to {table}/{object_key}: {e}") from None
    uri = f"{store.location()}/{object_key}"
    raw["model"]["data"][key][i] = uri
    log.info("staged %s -> %s", path, uri)
    return uri


def prepare_files(raw: dict, table: Optional[str], address: str, mode: StageMode, base: Path,
                  endpoint_url: Optional[str] = None) -> list[str]:
    """Rewrite the config's files (checked by build_config) for where the job runs; the staged URIs (maybe
    none)."""
    remote = mode == "always" or (mode == "auto" and not is_loopback(address))
    staged = stage_to_table(raw, table, base, address, endpoint_url) if remote else []
    if not remote:
        absolutize(raw, base)
    elif is_local(raw.get("model", {}).get("language_model_path")) and Path(
            raw["model"]["language_model_path"]).exists():
        log.warning("base model %r is a local folder; the remote cluster must have it at the same path",
                    raw["model"]["language_model_path"])
    return staged
