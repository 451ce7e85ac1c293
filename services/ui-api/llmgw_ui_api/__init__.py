"""ui-api service: admin REST API and web UI."""
