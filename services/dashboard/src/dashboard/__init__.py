"""Aggregates pending-action counts from the stream with faust-streaming and serves the dashboard."""
