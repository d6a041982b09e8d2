"""The workflow-runner domain: users, contacts, workflows with versions and steps, enrollments and
the runner state machine. Plain Python, no I/O."""
