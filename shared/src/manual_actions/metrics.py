"""Prometheus metrics shared by every service. Each metric is declared once, here, with a comment.

Service-specific metrics are declared in the service's own ``metrics.py`` the same way.

Everything registers in prometheus_client's default registry, which ``GET /metrics`` (see
``manual_actions.http``) exposes. One process runs one service, so no metric carries a
``service`` label: Prometheus adds ``job``/``instance`` when scraping, and ``service_info`` says
which service and version a process is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# Constant 1 with labels ``service`` and ``version``: which service this process is, so dashboards
# can join it onto any other series of the same instance.
SERVICE_INFO = Info("manual_actions_service", "The service this process runs and its version.")

# HTTP requests handled, by method, route template (``/actions/{action_id}``, never the raw path,
# to keep cardinality bounded; ``unmatched`` when no route matched) and response status code.
HTTP_REQUESTS = Counter(
    "manual_actions_http_requests",
    "HTTP requests handled, by method, route template and status code.",
    ["method", "route", "status"],
)

# Seconds from receiving a request to sending the end of its response, same labels as above.
# Buckets span a fast health check to a slow database-bound page.
HTTP_REQUEST_DURATION = Histogram(
    "manual_actions_http_request_duration_seconds",
    "Time to handle an HTTP request, by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Readiness checks that failed when ``GET /ready`` ran them, by check name. A rising rate means a
# dependency (database, broker) is unreachable from this process.
READINESS_CHECK_FAILURES = Counter(
    "manual_actions_readiness_check_failures",
    "Readiness checks that failed, by check name.",
    ["check"],
)

# Background loops (consumers, relays, workers) that ended with an exception and stopped the
# process, by loop name. Alert on any increase: the process is exiting to be restarted.
BACKGROUND_LOOP_CRASHES = Counter(
    "manual_actions_background_loop_crashes",
    "Background loops that crashed and stopped the process, by loop name.",
    ["loop"],
)


def set_service_info(service_name: str, version: str) -> None:
    """Record which service and version this process runs (``manual_actions_service_info``)."""
    SERVICE_INFO.info({"service": service_name, "version": version})


class ChildProcessMetrics(Collector):
    """Exports ``metrics`` of this process merged with the same metrics of its child processes.

    The children run in prometheus_client's multiprocess mode (their environment has
    ``PROMETHEUS_MULTIPROC_DIR=directory``, so every value they write lands in an mmap file of
    ``directory`` named after their pid); this process need not. ``install`` takes ``metrics`` out
    of the registry and puts this collector in their place, so ``GET /metrics`` shows each metric
    once: counters and histograms summed over this process and the children's files (files of
    dead children included, so the sums never go back), gauges with this process's own series
    first and, for label sets this process has none of, the children's value as their
    ``multiprocess_mode`` merges it. Files named after this process's pid are skipped (they are
    its own, when it runs in multiprocess mode itself).
    """

    def __init__(self, directory: Path, metrics: Sequence[MetricWrapperBase],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self._directory = directory
        self._metrics = tuple(metrics)
        self._registry = registry

    def install(self) -> None:
        """Replace ``metrics`` in the registry with this collector."""
        for metric in self._metrics:
            self._registry.unregister(metric)
        self._registry.register(self)

    def uninstall(self) -> None:
        """Put ``metrics`` back in the registry (this process's values alone)."""
        self._registry.unregister(self)
        for metric in self._metrics:
            self._registry.register(metric)

    def describe(self) -> list[Metric]:
        # The registry checks names against this; the metrics' own descriptions are the same names.
        return [family for metric in self._metrics for family in metric.describe()]

    def collect(self) -> Iterator[Metric]:
        own_suffix = f"_{os.getpid()}.db"
        files = [str(f) for f in self._directory.glob("*.db") if not f.name.endswith(own_suffix)]
        children = {family.name: family for family in MultiProcessCollector.merge(files)}
        for metric in self._metrics:
            for family in metric.collect():
                child = children.get(family.name)
                if child is not None:
                    family.samples = _merged(family, child)
                yield family


def _merged(own: Metric, child: Metric) -> list[Sample]:
    def key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
        return sample.name, tuple(sorted(sample.labels.items()))

    samples = {key(s): s for s in own.samples}
    for sample in child.samples:
        k = key(sample)
        mine = samples.get(k)
        if mine is None:
            samples[k] = sample
        elif own.type != "gauge":
            samples[k] = mine._replace(value=mine.value + sample.value)
    return list(samples.values())
