"""What a scheduler has done, for a user to watch: counters, recent token rate, latency histograms (no Ray,
no HTTP; serve/metrics.py exposes them in Prometheus' text format and in /healthz).

Latencies are kept as cumulative histogram buckets (Prometheus' `le` convention: a value counts in every
bucket whose bound is >= it) plus their sum and count, so a Prometheus server can compute any quantile.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

# seconds: bucket bounds of time to first token and of the gap between a row's tokens
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0  # tokens/s is measured over this many recent seconds


@dataclass
class Histogram:
    """Cumulative counts per bound in `bounds` (seconds), with the sum and count of all observations."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Add one observation (seconds)."""
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    @property
    def mean(self) -> float | None:
        """Mean of the observations; None before the first."""
        return self.total / self.count if self.count else None


class SchedulerStats:
    """Counters of one scheduler: tokens generated, requests finished / cancelled / failed / refused (queue
    full), and histograms of time to first token (`ttft`, from submission), inter-token latency (`itl`) and
    finished requests' latency (`latency`, submission to last token)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.tokens = 0
        self.requests = {"finished": 0, "cancelled": 0, "failed": 0, "rejected": 0}
        self.ttft, self.itl, self.latency = Histogram(), Histogram(), Histogram()  # latency: submission to end
        # decoding steps ("batches": one forward pass each), row-steps, the most rows, steps mixing tasks
        self.steps = {"batches": 0, "rows": 0, "max_rows": 0, "mixed_task_batches": 0}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps

    def add_tokens(self, n: int, now: float) -> None:
        """Count `n` tokens generated at `now` (one step's)."""
        if n:
            self.tokens += n
            self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = self.clock()
        recent = sum(n for t, n in tuple(self._recent) if t >= now - RATE_WINDOW_S)  # a copy: steps append
        return recent / RATE_WINDOW_S

    def count_step(self, rows: int, tasks: int) -> None:
        """One decoding step of `rows` rows of `tasks` distinct task versions."""
        s = self.steps
        s["batches"], s["rows"], s["max_rows"] = s["batches"] + 1, s["rows"] + rows, max(s["max_rows"], rows)
        s["mixed_task_batches"] += tasks > 1

    def count(self, outcome: str, n: int = 1) -> None:
        """`n` requests more with `outcome` (finished, cancelled, failed, rejected)."""
        self.requests[outcome] += n

    def summary(self) -> dict:
        """The numbers as plain JSON values (what /healthz shows)."""
        def ms(v: float | None) -> float | None:
            return round(v * 1000, 2) if v is not None else None

        return {"tokens_generated": self.tokens, "tokens_per_s": round(self.tokens_per_s(), 2),
                "requests": dict(self.requests), "ttft_ms_mean": ms(self.ttft.mean),
                "inter_token_ms_mean": ms(self.itl.mean), "request_latency_ms_mean": ms(self.latency.mean),
                "ttft_count": self.ttft.count,
                "batches": dict(self.steps)}
