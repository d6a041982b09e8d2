"""Metrics of the consumer loop (``manual_actions.kafka``) and the outbox relay (``manual_actions.outbox``).

Each metric is declared once, here, with a comment saying what it counts. They live in
prometheus_client's default registry, which every service exposes on ``GET /metrics``.
``group`` is the consumer group (one per consuming service), so the label set stays small.
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import Counter, Gauge, Histogram

# Messages fetched by a consumer loop, by group and topic, counted when fetched (before decoding),
# so it includes messages that end up dead-lettered.
CONSUMER_MESSAGES = Counter(
    "manual_actions_consumer_messages",
    "Messages fetched by a consumer loop, by consumer group and topic.",
    ["group", "topic"],
)

# Batches a consumer loop fetched and finished (handled, dead-lettered or both, then committed),
# by group. The ratio of messages to batches is the average batch size.
CONSUMER_BATCHES = Counter(
    "manual_actions_consumer_batches",
    "Batches a consumer loop finished and committed, by consumer group.",
    ["group"],
)

# Messages sent to the dead-letter topic, by group, original topic and reason class:
# ``invalid`` (could not be decoded), ``permanent`` (the handler raised PermanentError) or
# ``exhausted`` (the handler failed ``max_attempts`` times with a non-transient error).
CONSUMER_DEAD_LETTERS = Counter(
    "manual_actions_consumer_dead_letters",
    "Messages dead-lettered by a consumer loop, by consumer group, topic and reason class.",
    ["group", "topic", "reason"],
)

# Handler failures that the loop will retry, by group and kind: ``transient`` (database or broker
# unreachable; retried forever, never dead-lettered) or ``error`` (counted against max_attempts).
CONSUMER_HANDLER_FAILURES = Counter(
    "manual_actions_consumer_handler_failures",
    "Handler calls that raised and will be retried, by consumer group and kind (transient, error).",
    ["group", "kind"],
)

# Seconds one handler call took (a whole batch, or one message when a batch is retried one by
# one), successful or not, by group.
CONSUMER_HANDLER_DURATION = Histogram(
    "manual_actions_consumer_handler_duration_seconds",
    "Time one handler call took, by consumer group.",
    ["group"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# Messages in a partition after this group's last commit (the broker's high watermark as of the
# last fetch minus the committed offset), by group, topic and partition. Updated after each commit
# of that partition, so it is as fresh as the last batch that touched it. A process forgets a
# partition's series when the partition is revoked; in prometheus_client's multiprocess mode (the
# consumer-only children of action-queue) series cannot be removed, so there the most recently
# written value of a partition wins across processes instead.
CONSUMER_LAG = Gauge(
    "manual_actions_consumer_lag",
    "Messages not yet committed by the consumer group, per partition, as of the last commit.",
    ["group", "topic", "partition"],
    multiprocess_mode="mostrecent",
)

#: The consumer metrics, which a parent process exports merged with its children's
#: (``manual_actions.metrics.ChildProcessMetrics``).
CONSUMER_METRICS = (CONSUMER_MESSAGES, CONSUMER_BATCHES, CONSUMER_DEAD_LETTERS, CONSUMER_HANDLER_FAILURES,
                    CONSUMER_HANDLER_DURATION, CONSUMER_LAG)


def forget_lag(group: str, topic: str, partition: int) -> None:
    """Drop a revoked partition's lag series (a no-op in multiprocess mode, which cannot remove)."""
    if multiprocess_mode():
        return
    with contextlib.suppress(KeyError):
        CONSUMER_LAG.remove(group, topic, str(partition))


def multiprocess_mode() -> bool:
    """True when this process writes its metrics to ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client
    chooses that when it is imported)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ

# Outbox rows the relay published (the broker acknowledged them and the rows were marked), by topic.
OUTBOX_PUBLISHED = Counter(
    "manual_actions_outbox_published",
    "Outbox rows published to Kafka and marked published, by topic.",
    ["topic"],
)

# Age in seconds of the oldest outbox row not yet published (0 when none is pending), measured by
# the active relay each time it looks for work. This is the relay's lag: alert when it keeps growing.
OUTBOX_OLDEST_UNPUBLISHED_AGE = Gauge(
    "manual_actions_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row as seen by the active relay (0 when none).",
)

# 1 while this process holds the relay's advisory lock (it is the one relay publishing for its
# database), 0 while it waits as a standby or is disconnected.
OUTBOX_RELAY_ACTIVE = Gauge(
    "manual_actions_outbox_relay_active",
    "1 when this process is the active outbox relay of its database, else 0.",
)

# Times a relay cycle failed (database or broker unreachable) and was retried after a backoff.
OUTBOX_RELAY_ERRORS = Counter(
    "manual_actions_outbox_relay_errors",
    "Outbox relay cycles that failed and were retried.",
)
