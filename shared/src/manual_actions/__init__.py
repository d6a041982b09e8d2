"""Shared contracts and plumbing for the Manual Actions services.

Business rules never live here: this package holds the event contracts (``contracts``)
and infrastructure every service reuses (settings, Kafka, outbox, auth, logging, metrics).
"""
