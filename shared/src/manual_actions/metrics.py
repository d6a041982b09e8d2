"""Prometheus metrics shared by every service. Each metric is declared once, here, with a comment.

Service-specific metrics are declared in the service's own ``metrics.py`` the same way.
"""

from __future__ import annotations
