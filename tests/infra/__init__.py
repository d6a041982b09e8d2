"""Tests of the local infrastructure (devstack) against the real components."""
