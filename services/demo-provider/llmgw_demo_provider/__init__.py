"""A small, deterministic OpenAI-compatible server: the demo provider of ``llmgw run``,
the fake upstream of the integration tests and the upstream of ``make bench``."""

from .app import create_app
from .behaviour import Behaviour

__all__ = ["Behaviour", "create_app"]
