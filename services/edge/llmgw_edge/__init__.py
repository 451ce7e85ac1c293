"""Edge service: the OpenAI-compatible HTTP front of the gateway."""
