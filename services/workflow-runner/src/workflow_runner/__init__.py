"""Owns contacts, users, workflows and enrollments; runs steps and queues manual actions."""
