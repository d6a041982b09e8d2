"""Metrics of the dashboard service. Each metric is declared once, here, with a comment.

Shared HTTP/readiness metrics come from ``manual_actions.metrics``; everything registers in the
default registry that ``GET /metrics`` exposes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Lifecycle messages handled by stage 1, by outcome: ``applied`` (newer event, state advanced),
# ``stale`` (sequence not newer: no effect), ``redelivered`` (same offset again: stored delta
# re-sent), ``ignored`` (a valid message type the counter does not use) and ``dead_lettered``.
LIFECYCLE_EVENTS = Counter(
    "dashboard_lifecycle_events",
    "Action-lifecycle messages processed by the dashboard, by outcome.",
    ["outcome"],
)

# Deltas handled by stage 2, by outcome: ``applied``, ``duplicate`` (already applied: dropped)
# and ``dead_lettered``.
PENDING_DELTAS = Counter(
    "dashboard_pending_deltas",
    "Pending-count deltas processed by the dashboard, by outcome.",
    ["outcome"],
)

# Messages sent to the dead-letter topic, by the stage that gave up on them (``lifecycle`` or
# ``deltas``). Any increase needs a look at the dead letters' ``dlq.reason`` header.
DEAD_LETTERS = Counter(
    "dashboard_dead_letters",
    "Messages the dashboard sent to the dead-letter topic, by stage.",
    ["stage"],
)

# A tenant's count went below zero: a lifecycle producer broke the contract (e.g. a completion
# counted twice under different sequences). The counts are kept as computed, never clamped, so
# the error stays visible; alert on any increase.
NEGATIVE_COUNTS = Counter(
    "dashboard_negative_counts",
    "Deltas after which some pending count of a tenant was negative.",
)

PendingSnapshot = Callable[[], Iterable[tuple[str, Mapping[str, int]]]]


class PendingCountsCollector(Collector):
    """``dashboard_pending_actions{tenant, type}``: the current counts, read from the ``pending``
    table at scrape time (so they are exact after a restart and never stale), for the tenants
    whose partitions this process holds. ``type`` is ``call`` or ``sms``.
    """

    def __init__(self) -> None:
        self.source: PendingSnapshot | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dashboard_pending_actions",
            "Pending manual actions per tenant and type, from the dashboard's pending table.",
            labels=["tenant", "type"],
        )
        source = self.source
        if source is not None:
            for tenant, counts in source():
                family.add_metric([tenant, "call"], counts["calls"])
                family.add_metric([tenant, "sms"], counts["sms"])
        yield family


# One collector per process, registered at import; the running stream processor plugs its table in.
PENDING_ACTIONS = PendingCountsCollector()
REGISTRY.register(PENDING_ACTIONS)
