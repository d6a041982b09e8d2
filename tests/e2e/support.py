"""Helpers for the end-to-end tests: API clients and polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def api(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def eventually(probe: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
