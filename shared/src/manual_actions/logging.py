"""Structured JSON logs on stdout: one object per line with time, level, service, logger, message
and any ``extra`` fields."""

from __future__ import annotations


def configure_logging(service_name: str, level: str = "INFO") -> None:
    raise NotImplementedError
