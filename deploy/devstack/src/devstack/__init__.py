"""Local infrastructure for the demo and the tests: real Kafka, real PostgreSQL, Twilio contract mock."""
