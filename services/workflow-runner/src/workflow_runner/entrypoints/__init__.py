"""Entrypoints: the HTTP API, the action-lifecycle consumer and the process start (``main``)."""
