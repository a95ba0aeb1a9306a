"""`SearchJob`: one `promptray.jobs.search` run on a Ray cluster; like `TuningJob`, with a result that names
the best trial of each search group (its config and metric) besides the published versions."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from promptray.sdk.errors import JobResultError
from promptray.sdk.job import TuningJob
from promptray.sdk.models import RESULT_MARKER, _marked_json, log_tail


class BestTrial(BaseModel):
    """A search group's best trial: its id, its hyperparameters and (extra fields) its metrics."""

    model_config = ConfigDict(extra="allow", frozen=True)
    trial_id: str
    config: dict[str, Any]


class SearchResult(BaseModel):
    """What a finished search published: the best trial per group (tasks, or 'joint') and its versions."""

    model_config = ConfigDict(extra="allow", frozen=True)
    search_id: str
    table: str
    versions: dict[str, str]
    metric: str
    best: dict[str, BestTrial]
    trials: int
    trials_errored: int = 0  # trials that ended with an error (each one's error is in trials.json)
    run_dir: Optional[str] = None

    def best_value(self, group: str) -> float:
        """The search metric of `group`'s best trial (KeyError for an unknown group)."""
        return float(getattr(self.best[group], self.metric))


def parse_search_result(log: str) -> Optional[SearchResult]:
    """The last well-formed search PROMPTRAY_RESULT of a log, or None."""
    for line in reversed(log.splitlines()):
        data = _marked_json(line, RESULT_MARKER)
        if isinstance(data, dict):
            try:
                return SearchResult.model_validate(data)
            except ValidationError:
                continue
    return None


class SearchJob(TuningJob):
    """A Ray Tune search job. Get one from `Client.submit_search`."""

    def __repr__(self) -> str:
        return f"SearchJob(id={self.id!r}, address={self._jobs.address!r})"

    def result(self, timeout: Optional[float] = None) -> SearchResult:  # type: ignore[override]
        """Wait for the job, then the best trials and what they published."""
        self.wait(timeout=timeout, show_progress=False)
        log = self._jobs.logs(self.id)
        result = parse_search_result(log)
        if result is None:
            raise JobResultError(f"job {self.id} succeeded but its log has no search PROMPTRAY_RESULT line; was "
                                 f"it started with `python -m promptray.jobs.search`? Last lines:\n{log_tail(log)}")
        return result
