"""A replica's metrics: `GET /metrics` in Prometheus' text format (prometheus_client) and the same numbers as
JSON in `/healthz` (no Ray).

Read from the replica's scheduler and prefix cache when scraped: queue depth, rows being prefilled and
running, KV-cache slots held / reserved / budgeted, generated tokens (total and per second over the last 10
s), requests by outcome, time to first token and inter-token latency as histograms (seconds), prefix-cache
hits. Each replica answers for itself (with several replicas, a scrape through the HTTP proxy reaches one of
them; Prometheus' Ray service discovery or one scrape per replica sees them all).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from promptray.platform.generation.scheduler import Scheduler
from promptray.platform.generation.scheduler_stats import Histogram
from promptray.serve.prefix_cache import PrefixCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
GAUGES = {  # snapshot key -> (metric name, help)
    "waiting": ("promptray_queue_depth", "requests waiting for room in the running batch"),
    "prefilling": ("promptray_prefilling_rows", "admitted rows whose prompt is being prefilled"),
    "running": ("promptray_running_rows", "rows in the running batch"),
    "kv_tokens_held": ("promptray_kv_tokens_held", "KV-cache slots the running batch holds (rows x length)"),
    "kv_tokens_reserved": ("promptray_kv_tokens_reserved", "KV-cache slots the admitted rows may come to hold"),
    "kv_budget_tokens": ("promptray_kv_budget_tokens", "KV-cache slots the running rows may hold at most"),
}


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(str(b), c) for b, c in zip(h.bounds, h.counts)] + [("+Inf", h.count)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


class _Collector:
    """prometheus_client custom collector: reads the scheduler and prefix cache at every scrape."""

    def __init__(self, scheduler: Scheduler, prefixes: PrefixCache):
        self.scheduler, self.prefixes = scheduler, prefixes

    def collect(self):
        snap, stats = self.scheduler.snapshot(), self.scheduler.stats
        for key, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=snap[key])
        yield GaugeMetricFamily("promptray_generated_tokens_per_second", "generated tokens per second over the "
                                "last 10 s", value=stats.tokens_per_s())
        yield CounterMetricFamily("promptray_generated_tokens", "tokens generated", value=stats.tokens)
        requests = CounterMetricFamily("promptray_requests", "rows by outcome (rejected: queue full)",
                                       labels=["outcome"])
        for outcome, n in stats.requests.items():
            requests.add_metric([outcome], n)
        yield requests
        yield CounterMetricFamily("promptray_prefix_cache_hits", "prefilled rows whose prompt start came from the "
                                  "prefix cache", value=self.prefixes.hits)
        yield CounterMetricFamily("promptray_prefilled_rows", "rows prefilled", value=self.prefixes.rows)
        yield _histogram("promptray_time_to_first_token_seconds", "from submission to the first generated token",
                         stats.ttft)
        yield _histogram("promptray_inter_token_latency_seconds", "between consecutive tokens of a row", stats.itl)
        yield _histogram("promptray_request_latency_seconds", "finished requests, submission to last token",
                         stats.latency)


class ReplicaMetrics:
    """The metrics of one replica (its own registry: no process-global state)."""

    def __init__(self, scheduler: Scheduler, prefixes: PrefixCache):
        self.scheduler, self.prefixes = scheduler, prefixes
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(scheduler, prefixes))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def summary(self) -> dict:
        """The same numbers as JSON values (`/healthz`'s `scheduler`)."""
        return {**self.scheduler.snapshot(), **self.scheduler.stats.summary(),
                "prefix_cache_hits": self.prefixes.hits, "prefilled_rows": self.prefixes.rows}
