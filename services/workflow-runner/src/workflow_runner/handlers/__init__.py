"""Use cases (the service layer): each takes a command or event, uses a unit of work, and stages the
events it causes in the same transaction."""
