"""The Ray Jobs API (`ray.job_submission.JobSubmissionClient`) behind typed errors.

Ray reports a missing job, a refused connection and a missing token as RuntimeError, ConnectionError and
AuthenticationError with free text; here they become JobNotFoundError, ClusterUnreachableError and
ClusterAuthError that name the address and say what to do. Ray is imported on first connection only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

from promptray.sdk.auth import auth_headers, describe_auth_failure
from promptray.sdk.errors import ClusterAuthError, ClusterError, ClusterUnreachableError, JobNotFoundError
from promptray.sdk.models import JobStatus, JobSummary


def _is_auth_error(e: BaseException) -> bool:
    return type(e).__name__ == "AuthenticationError" or "status code 401" in str(e) or "status code 403" in str(e)


class RayJobs:
    """One connection to a cluster's Jobs API (the dashboard's HTTP address).

    Every call raises the SDK's typed errors instead of Ray's free-text ones: ClusterAuthError (401/403),
    JobNotFoundError (an unknown job id), ClusterUnreachableError (no cluster answers), ClusterError (the
    cluster refused the request, or Ray's job client is not installed)."""

    def __init__(self, address: str, token: Optional[str] = None):
        self.address, self.token = address, token
        with self._errors():
            from ray.job_submission import JobSubmissionClient

            self.client = JobSubmissionClient(address, headers=auth_headers(token))

    @contextlib.contextmanager
    def _errors(self, job_id: Optional[str] = None) -> Iterator[None]:
        try:
            yield
        except ImportError as e:
            raise ClusterError(f"the SDK needs Ray's job client ({e}): pip install 'promptray[ray]'") from None
        except Exception as e:  # Ray raises plain RuntimeError/ConnectionError with free text
            raise self._translate(e, job_id) from None

    def _translate(self, e: Exception, job_id: Optional[str]) -> Exception:
        import requests

        text = str(e)
        if _is_auth_error(e):
            return ClusterAuthError(describe_auth_failure(self.address, self.token, text))
        if job_id is not None and ("404" in text or "does not exist" in text):
            return JobNotFoundError(job_id, self.address)
        if isinstance(e, (ConnectionError, requests.exceptions.RequestException)):
            return ClusterUnreachableError(
                f"no Ray cluster answers at {self.address} ({text.strip() or type(e).__name__}); start one "
                "with `ray start --head --dashboard-port 8265`, check the address (the dashboard's "
                "http://HOST:PORT, not the GCS port 6379), or leave address=None for an embedded local cluster")
        if isinstance(e, (RuntimeError, ValueError)):
            return ClusterError(f"the Ray cluster at {self.address} refused the request: {text.strip()}")
        return e

    # ------------------------------------------------------------------ calls
    def submit(self, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str],
               submission_id: Optional[str] = None) -> str:
        """Submit `entrypoint` (a shell command) with its runtime_env and metadata; the job's id."""
        with self._errors():
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                                          submission_id=submission_id)

    def summary(self, job_id: str) -> JobSummary:
        """The job's status, entrypoint, message, start/end times and metadata."""
        with self._errors(job_id):
            return _summary(self.client.get_job_info(job_id))

    def status(self, job_id: str) -> JobStatus:
        """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        with self._errors(job_id):
            return JobStatus(str(self.client.get_job_status(job_id).value))

    def logs(self, job_id: str) -> str:
        """The job's log so far."""
        with self._errors(job_id):
            return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job: True when it was running, else False (Ray's answer)."""
        with self._errors(job_id):
            return bool(self.client.stop_job(job_id))

    def list(self) -> list[JobSummary]:
        """Every job the cluster knows."""
        with self._errors():
            return [_summary(d) for d in self.client.list_jobs()]


def _summary(details: Any) -> JobSummary:
    meta = {str(k): str(v) for k, v in (getattr(details, "metadata", None) or {}).items()}
    return JobSummary(id=details.submission_id or details.job_id, status=JobStatus(str(details.status.value)),
                      entrypoint=details.entrypoint or "", message=details.message,
                      start_time=details.start_time, end_time=details.end_time, metadata=meta)
