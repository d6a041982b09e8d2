"""Root conftest of the integration and end-to-end tests.

The session fixtures that start the real Kafka, PostgreSQL and Twilio contract mock — ``stack``
and ``kafka_bootstrap`` — live in ``devstack.pytest_plugin``. The ``devstack`` package registers
that module as a pytest plugin (entry point ``pytest11``), so the same fixtures reach every test
directory of the repository, not only this one; see that module for what they provide.
"""
