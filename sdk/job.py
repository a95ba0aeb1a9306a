"""`TuningJob`: one `promptray.jobs.train` run on a Ray cluster, followed through the Ray Jobs API.

Status, logs and the stop request come from Ray; metrics and the result are read from the job's log
(`PROMPTRAY_METRICS` / `PROMPTRAY_RESULT` lines, see `models.py`), so a job submitted with the plain
`ray job submit` CLI can be followed the same way (`client.get_job(id)`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal, Optional, Union, overload

from promptray.sdk.cluster import RayJobs
from promptray.sdk.errors import JobCancelledError, JobFailedError, JobResultError, JobTimeoutError
from promptray.sdk.models import (
    JobStatus,
    JobSummary,
    MetricsRecord,
    TuningResult,
    log_tail,
    parse_metrics,
    parse_result,
)

POLL_S = 1.0


class _Progress:
    """A tqdm bar fed with the complete log lines that arrived since the last update."""

    def __init__(self, job_id: str, enabled: bool):
        self.job_id, self.enabled, self.seen, self.bar = job_id, enabled, 0, None

    def update(self, log: str) -> None:
        if not self.enabled:
            return
        end = log.rfind("\n") + 1
        for record in parse_metrics(log[self.seen:end]):
            self._show(record)
        self.seen = max(self.seen, end)

    def _show(self, record: MetricsRecord) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=record.total_steps, desc=f"job {self.job_id}", unit="step")
        self.bar.update(max(0, record.step - self.bar.n))
        shown = {k: round(v, 4) for k, v in (("loss", record.loss), ("val_loss", record.val_loss),
                                               ("tok/s", record.tokens_per_s)) if v is not None}
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TuningJob:
    """A prompt-tuning job on a Ray cluster. Get one from `Client.submit_tuning` or `Client.get_job`."""

    def __init__(self, jobs: RayJobs, job_id: str):
        self._jobs, self._id = jobs, job_id

    @property
    def id(self) -> str:
        """The job's submission id on the cluster."""
        return self._id

    def __repr__(self) -> str:
        return f"TuningJob(id={self._id!r}, address={self._jobs.address!r})"

    def status(self) -> JobStatus:
        """The job's current status (asks the cluster)."""
        return self._jobs.status(self._id)

    def info(self) -> JobSummary:
        """The job's summary: status, entrypoint, message, times, metadata (asks the cluster)."""
        return self._jobs.summary(self._id)

    @overload
    def logs(self, follow: Literal[False] = False) -> str: ...

    @overload
    def logs(self, follow: Literal[True]) -> Iterator[str]: ...

    def logs(self, follow: bool = False) -> Union[str, Iterator[str]]:
        """The job's log so far; with follow=True an iterator of new log text until the job ends."""
        return self._follow() if follow else self._jobs.logs(self._id)

    def _follow(self, poll_s: float = POLL_S) -> Iterator[str]:
        seen = 0
        while True:
            done = self.status().is_terminal
            log = self._jobs.logs(self._id)
            if len(log) > seen:
                yield log[seen:]
                seen = len(log)
            if done:
                return
            time.sleep(poll_s)

    def metrics(self) -> list[MetricsRecord]:
        """The training records logged so far (rank 0's PROMPTRAY_METRICS lines), in order."""
        return parse_metrics(self._jobs.logs(self._id))

    def wait(self, timeout: Optional[float] = None, show_progress: bool = True,
             poll_s: float = POLL_S) -> JobStatus:
        """Block until the job ends; a tqdm bar follows its steps. Returns SUCCEEDED, raises JobFailedError
        (with the log's tail), JobCancelledError, or JobTimeoutError (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        progress = _Progress(self._id, show_progress)
        try:
            while True:
                status = self.status()
                progress.update(self._jobs.logs(self._id) if show_progress or status.is_terminal else "")
                if status.is_terminal:
                    return self._outcome(status)
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeoutError(f"job {self._id} still {status.value.lower()} after {timeout} s; "
                                          "it keeps running (job.cancel() stops it)")
                time.sleep(poll_s)
        finally:
            progress.close()

    def _outcome(self, status: JobStatus) -> JobStatus:
        if status is JobStatus.SUCCEEDED:
            return status
        info, tail = self.info(), log_tail(self._jobs.logs(self._id))
        error = JobCancelledError if status is JobStatus.STOPPED else JobFailedError
        raise error(self._id, status.value, info.message, tail)

    def cancel(self, wait: bool = True, timeout: float = 60.0) -> bool:
        """Ask Ray to stop the job; True if it was still running. With `wait`, return once it has ended."""
        stopped = self._jobs.stop(self._id)
        deadline = time.monotonic() + timeout
        while wait and not self.status().is_terminal and time.monotonic() < deadline:
            time.sleep(0.25)
        return stopped

    def result(self, timeout: Optional[float] = None) -> TuningResult:
        """Wait for the job, then what it published (table, task versions, steps, best val loss)."""
        self.wait(timeout=timeout, show_progress=False)
        result = parse_result(self._jobs.logs(self._id))
        if result is None:
            raise JobResultError(f"job {self._id} succeeded but its log has no PROMPTRAY_RESULT line; was it "
                                 "started with `python -m promptray.jobs.train`? Last lines:\n"
                                 f"{log_tail(self._jobs.logs(self._id))}")
        return result
