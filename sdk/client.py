"""`Client`: submit prompt-tuning jobs to a Ray cluster and find them again.

    from promptray.sdk import Client, TaskTemplate

    client = Client(address="http://127.0.0.1:8265", table="s3://bucket/prompts")
    job = client.submit_tuning(config="examples/sentiment_prompt_tuning.yaml",
                               overrides={"trainer.max_steps": 50, "trainer.devices": 2})
    job.wait()                      # progress bar from the job's metrics; raises JobFailedError on failure
    print(job.result().versions)    # {"sentiment": "v000001-..."}

Without `address` the client starts a private single-node cluster (`ray start --head` on loopback, token
auth, its own temp dir and ports; see `local_cluster.py`) on first use and stops it at `close()` or exit.
The config is checked on the client (JobConfigError lists every problem) and shipped to the job as a YAML
file in the job's `runtime_env.working_dir`; the entrypoint is
`python -m promptray.jobs.train --config promptray_job.yaml`.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptray.platform.errors import ConfigError
from promptray.sdk.auth import find_token
from promptray.sdk.cluster import RayJobs
from promptray.sdk.job import TuningJob
from promptray.sdk.local_cluster import LocalCluster
from promptray.sdk.models import JobSummary
from promptray.sdk.search_job import SearchJob
from promptray.sdk.spec import Overrides, build_config
from promptray.sdk.staging import StageMode, prepare_files

JOB_CONFIG_NAME = "promptray_job.yaml"
TRAIN_MODULE = "promptray.jobs.train"
SEARCH_MODULE = "promptray.jobs.search"


class ClientSettings(BaseModel):
    """The Client's arguments, checked together."""

    model_config = ConfigDict(extra="forbid")
    address: Optional[str] = None
    table: Optional[str] = None
    auth_token: Optional[str] = None
    endpoint_url: Optional[str] = None
    stage_files: StageMode = "auto"
    python: str = Field("python", min_length=1)
    num_cpus: Optional[int] = Field(None, ge=1)

    @field_validator("address")
    @classmethod
    def _address(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        url = v.strip().rstrip("/")
        url = url if "://" in url else f"http://{url}"
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise ValueError("use the dashboard's HTTP address, e.g. http://127.0.0.1:8265 (not ray:// or the "
                             "GCS port 6379), or leave it out for an embedded local cluster")
        return url


def _settings(**kwargs: Any) -> ClientSettings:
    try:
        return ClientSettings(**kwargs)
    except ValidationError as e:
        raise ConfigError([f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                           for err in e.errors()], title="invalid Client arguments") from None


class Client:
    """Submits tuning jobs to the Ray cluster at `address` (the dashboard's http://HOST:PORT; default: an
    embedded local cluster), publishing into `table` (local path or s3://BUCKET/PREFIX; default: the
    config's model.nemo_path). `auth_token`: Ray's token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token). `endpoint_url`: the S3 endpoint for staging and the job's `storage.endpoint_url`.
    `stage_files`: "auto" uploads local data files to the table's bucket when the cluster is not on
    loopback, "always" also for loopback (a port-forwarded remote cluster), "never" passes paths as they are.
    `python`: the cluster's Python command. `num_cpus`: CPUs of the embedded cluster (default: all)."""

    def __init__(self, address: Optional[str] = None, table: Optional[str] = None, *,
                 auth_token: Optional[str] = None, endpoint_url: Optional[str] = None,
                 stage_files: StageMode = "auto", python: str = "python", num_cpus: Optional[int] = None):
        self.settings = _settings(address=address, table=table, auth_token=auth_token, endpoint_url=endpoint_url,
                                  stage_files=stage_files, python=python, num_cpus=num_cpus)
        self.table = self.settings.table
        self._cluster: Optional[LocalCluster] = None
        self._jobs: Optional[RayJobs] = None

    @property
    def address(self) -> Optional[str]:
        """The dashboard address (for the embedded cluster: once it has started)."""
        return self.settings.address or (self._cluster.dashboard_url if self._cluster and self._cluster.ports
                                         else None)

    @property
    def cluster(self) -> Optional[LocalCluster]:
        """The embedded cluster this client started (its PIDs, temp dir, ports), or None (an `address` was
        given, or it has not started yet)."""
        return self._cluster

    def __repr__(self) -> str:
        return f"Client(address={self.address or '(embedded, not started)'!r}, table={self.table!r})"

    def connect(self) -> RayJobs:
        """Connect now (start the embedded cluster if needed); later calls reuse the connection."""
        if self._jobs is None:
            if self.settings.address is None and self._cluster is None:
                # kept before it starts, so that close() stops what a start interrupted (Ctrl-C) left running
                self._cluster = LocalCluster(num_cpus=self.settings.num_cpus or os.cpu_count() or 1)
                atexit.register(self.close)
                try:
                    self._cluster.start()
                except BaseException:
                    self.close()
                    raise
            token = self._cluster.token if self._cluster else find_token(self.settings.auth_token)
            self._jobs = RayJobs(self.address, token)
        return self._jobs

    def close(self) -> None:
        """Stop the embedded cluster, if this client started one (jobs on it end with it)."""
        self._jobs = None
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            cluster.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ jobs
    def submit_tuning(self, config: Union[str, os.PathLike, dict, None] = None, overrides: Overrides = None, *,
                      table: Optional[str] = None, job_id: Optional[str] = None,
                      env_vars: Optional[dict[str, str]] = None, **fields: Any) -> TuningJob:
        """Check the config, make its files readable by the cluster, submit it; returns the running job.

        `config`: a YAML path or dict (NeMo's format), or instead the keyword arguments `fields` of the
        common case (see `promptray.sdk.spec.TuningRequest`: base_model, tasks, train_files,
        validation_files, style, num_workers, max_steps, ...). `overrides`: {dotted.key: value} or
        ["dotted.key=value"]. `table` wins over the client's. `env_vars` are set in the job's environment
        (they are stored in the job's runtime_env: never pass secrets this way)."""
        raw, cfg = build_config(os.fspath(config) if isinstance(config, os.PathLike) else config,
                                overrides, fields, table or self.table)
        submitted = self._submit(raw, cfg, TRAIN_MODULE, "tuning", job_id, env_vars)
        return TuningJob(self.connect(), submitted)

    def submit_search(self, config: Union[str, os.PathLike, dict, None] = None, overrides: Overrides = None, *,
                      table: Optional[str] = None, job_id: Optional[str] = None,
                      env_vars: Optional[dict[str, str]] = None, **fields: Any) -> SearchJob:
        """Like `submit_tuning`, for a config with a `search:` section: runs `promptray.jobs.search` (a Ray
        Tune search that publishes only the best trial's prompts); `job.result()` names the best trials."""
        raw, cfg = build_config(os.fspath(config) if isinstance(config, os.PathLike) else config,
                                overrides, fields, table or self.table, search=True)
        submitted = self._submit(raw, cfg, SEARCH_MODULE, "search", job_id, env_vars)
        return SearchJob(self.connect(), submitted)

    def _submit(self, raw: dict, cfg, module: str, kind: str, job_id: Optional[str],
                env_vars: Optional[dict[str, str]]) -> str:
        """Stage the files, write the config into the job's working dir, submit `module`; the job id."""
        if self.settings.endpoint_url and not (raw.get("storage") or {}).get("endpoint_url"):
            raw["storage"] = {**(raw.get("storage") or {}), "endpoint_url": self.settings.endpoint_url}
        prepare_files(raw, cfg.table_uri, self.settings.address or "http://127.0.0.1", self.settings.stage_files,
                      Path.cwd(), raw.get("storage", {}).get("endpoint_url"))
        jobs = self.connect()
        metadata = {"promptray": kind, "name": cfg.name, "tasks": ",".join(cfg.model.new_tasks),
                    "table": str(raw["model"].get("prompt_table") or raw["model"].get("nemo_path"))}
        with tempfile.TemporaryDirectory(prefix="promptray-job-") as folder:
            (Path(folder) / JOB_CONFIG_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
            runtime_env = {"working_dir": folder, "env_vars": dict(env_vars or {})}
            entrypoint = f"{self.settings.python} -m {module} --config {JOB_CONFIG_NAME}"
            return jobs.submit(entrypoint, runtime_env, metadata, submission_id=job_id)

    def get_job(self, job_id: str) -> TuningJob:
        """The job with this id (submitted by the SDK or with `ray job submit`); JobNotFoundError if none."""
        jobs = self.connect()
        summary = jobs.summary(job_id)
        search = summary.metadata.get("promptray") == "search" or SEARCH_MODULE in summary.entrypoint
        return (SearchJob if search else TuningJob)(jobs, job_id)

    def list_jobs(self, all_jobs: bool = False) -> list[JobSummary]:
        """The cluster's promptray tuning and search jobs (every job with all_jobs=True), oldest first."""
        found = self.connect().list()
        if not all_jobs:
            found = [j for j in found if j.metadata.get("promptray") in ("tuning", "search")
                     or TRAIN_MODULE in j.entrypoint or SEARCH_MODULE in j.entrypoint]
        return sorted(found, key=lambda j: (j.start_time or 0, j.id))
