"""Typed errors of the SDK. All are `PromptrayError`s; each says what happened, where, and what to do.

    PromptrayError
    ├── ConfigError ── JobConfigError        the job's configuration is invalid (nothing was submitted)
    ├── DataStagingError                     local data files cannot reach the cluster
    ├── ClusterError
    │   ├── ClusterUnreachableError          no Ray dashboard answers at the address
    │   ├── ClusterAuthError                 the cluster wants a (different) Ray auth token
    │   └── ClusterStartError                the embedded local cluster did not start
    ├── JobNotFoundError                     no job with that id on the cluster
    ├── JobFailedError ── JobCancelledError  the job ended without success (with the tail of its log)
    ├── JobTimeoutError                      wait(timeout=...) ran out; the job keeps running
    └── JobResultError                       the job succeeded but printed no PROMPTRAY_RESULT line
"""

from __future__ import annotations

from typing import Optional

from promptray.platform.errors import ConfigError, PromptrayError

__all__ = ["PromptrayError", "ConfigError", "JobConfigError", "DataStagingError", "ClusterError",
           "ClusterUnreachableError", "ClusterAuthError", "ClusterStartError", "JobNotFoundError",
           "JobFailedError", "JobCancelledError", "JobTimeoutError", "JobResultError"]


class JobConfigError(ConfigError):
    """The job's configuration (file, overrides or keyword arguments) is invalid; `problems` lists every
    problem, each naming the key, the received value and the fix; `job` names the kind of job ("tuning job",
    "search job") in the message. Raised before anything is submitted."""

    def __init__(self, problems: list[str] | str, *, job: str = "tuning job"):
        self.job = job
        super().__init__(problems, title=f"invalid {job}")


class DataStagingError(PromptrayError, ValueError):
    """Local data files cannot be made readable by the cluster (no bucket to stage them to, upload failed)."""


class ClusterError(PromptrayError):
    """The Ray cluster could not be used."""


class ClusterUnreachableError(ClusterError, ConnectionError):
    """Nothing (or no Ray dashboard) answers at the cluster address."""


class ClusterAuthError(ClusterError):
    """The cluster uses Ray token authentication and the token sent was missing or wrong."""


class ClusterStartError(ClusterError):
    """The embedded local cluster (`ray start --head`) did not start."""


class JobNotFoundError(PromptrayError, LookupError):
    """The cluster has no job with this id."""

    def __init__(self, job_id: str, address: str):
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} on the Ray cluster at {address}; "
                         f"client.list_jobs() lists the jobs it has")


class JobFailedError(PromptrayError):
    """The job ended without success. `log_tail` holds the last lines of its log."""

    def __init__(self, job_id: str, status: str, message: Optional[str], log_tail: str):
        self.job_id, self.status, self.message, self.log_tail = job_id, status, message, log_tail
        reason = f": {message.strip()}" if message and message.strip() else ""
        super().__init__(f"job {job_id} {status.lower()}{reason}\n--- last lines of its log ---\n{log_tail}")


class JobCancelledError(JobFailedError):
    """The job was stopped (`job.cancel()`, `ray job stop`) before it finished."""


class JobTimeoutError(PromptrayError, TimeoutError):
    """`wait(timeout=...)` ran out before the job finished; the job itself keeps running."""


class JobResultError(PromptrayError):
    """The job finished but its log has no (readable) `PROMPTRAY_RESULT` line."""
