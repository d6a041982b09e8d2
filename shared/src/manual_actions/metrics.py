"""Prometheus metrics shared by every service. Each metric is declared once, here, with a comment.

Service-specific metrics are declared in the service's own ``metrics.py`` the same way.

Everything registers in prometheus_client's default registry, which ``GET /metrics`` (see
``manual_actions.http``) exposes. One process runs one service, so no metric carries a
``service`` label: Prometheus adds ``job``/``instance`` when scraping, and ``service_info`` says
which service and version a process is.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

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
