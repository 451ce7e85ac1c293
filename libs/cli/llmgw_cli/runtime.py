"""Where a running ``llmgw run`` put its servers: ``<state dir>/runtime.json``, written by the runner.

The CLI's other commands (``llmgw keys``, ``replay``, ``events``) find the gateway's NATS and Redis
through it, so they work against ``make run`` with nothing to pass; an explicit ``--nats-url`` /
``--redis-url`` or ``NATS_URL`` / ``REDIS_URL`` wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUNTIME_FILE = "runtime.json"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def running(state_dir: str | os.PathLike[str]) -> dict:
    try:
        data = json.loads((Path(state_dir) / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def nats_url(explicit: str | None, state_dir: str | os.PathLike[str]) -> str:
    return explicit or os.environ.get("NATS_URL") or running(state_dir).get("nats_url") or DEFAULT_NATS_URL


def redis_url(explicit: str | None, state_dir: str | os.PathLike[str]) -> str:
    return explicit or os.environ.get("REDIS_URL") or running(state_dir).get("redis_url") or DEFAULT_REDIS_URL
