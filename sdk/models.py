"""What the SDK hands back: job status, metrics records and the job's result, parsed from the job log.

`python -m promptray.jobs.train` prints, on rank 0, one `PROMPTRAY_METRICS {json}` line per logged record
(Ray may prefix it with `(RayTrainWorker pid=...)`, so the marker is searched anywhere in a line) and, from
the driver at the end, one `PROMPTRAY_RESULT {json}` line.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

METRICS_MARKER = "PROMPTRAY_METRICS"
RESULT_MARKER = "PROMPTRAY_RESULT"
TAIL_LINES = 40


class JobStatus(str, enum.Enum):
    """Ray's job states (`ray.job_submission.JobStatus`), as plain strings."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended (STOPPED, SUCCEEDED or FAILED)."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class MetricsRecord(BaseModel):
    """One logged training record; keys beyond these (learning rate, ...) are kept as extra fields."""

    model_config = ConfigDict(extra="allow", frozen=True)
    step: int
    total_steps: Optional[int] = None
    loss: Optional[float] = None
    tokens_per_s: Optional[float] = None
    val_loss: Optional[float] = None


class TuningResult(BaseModel):
    """What a finished job published: the table, each new task's version, and the training summary."""

    model_config = ConfigDict(extra="allow", frozen=True)
    table: str
    versions: dict[str, str]
    steps: int
    best_val_loss: Optional[float] = None
    best_step: Optional[int] = None  # the step whose prompts were published (lowest validation loss, else the last)
    run_dir: Optional[str] = None

    @property
    def tasks(self) -> list[str]:
        """The tasks the job published, sorted."""
        return sorted(self.versions)


class JobSummary(BaseModel):
    """A job as `client.list_jobs()` sees it."""

    model_config = ConfigDict(frozen=True)
    id: str
    status: JobStatus
    entrypoint: str
    message: Optional[str] = None
    start_time: Optional[int] = None  # ms since the epoch, as Ray reports it
    end_time: Optional[int] = None
    metadata: dict[str, str] = {}


def _marked_json(line: str, marker: str) -> Optional[Any]:
    at = line.find(marker + " ")
    if at < 0:
        return None
    try:
        return json.loads(line[at + len(marker) + 1:].strip())
    except json.JSONDecodeError:
        return None


def parse_metrics(log: str) -> list[MetricsRecord]:
    """Every well-formed PROMPTRAY_METRICS record of a log, in order (malformed lines are skipped)."""
    records = []
    for line in log.splitlines():
        data = _marked_json(line, METRICS_MARKER)
        if isinstance(data, dict):
            try:
                records.append(MetricsRecord.model_validate(data))
            except ValidationError:
                continue
    return records


def parse_result(log: str) -> Optional[TuningResult]:
    """The last well-formed PROMPTRAY_RESULT of a log, or None."""
    for line in reversed(log.splitlines()):
        data = _marked_json(line, RESULT_MARKER)
        if isinstance(data, dict):
            try:
                return TuningResult.model_validate(data)
            except ValidationError:
                continue
    return None


def log_tail(log: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-blank lines of a job log (for error messages)."""
    kept = [line for line in log.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(the job wrote no log)"
