"""Contracts shared by every LLM Gateway service: config schema, messages,
NATS subjects, the Redis window layout, settings and connection helpers.
No service logic lives here."""
