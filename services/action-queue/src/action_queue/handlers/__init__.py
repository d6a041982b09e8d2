"""Use cases: HTTP-started (``queue``) and message-started (``materialise``), over a unit of work."""
