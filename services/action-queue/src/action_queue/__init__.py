"""Owns each manual action and the per-assignee queues; serves the queue API and issues SendSms/PlaceCall."""
