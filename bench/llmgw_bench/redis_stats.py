"""Redis commands per request: ``INFO commandstats`` read before and after a measured run.

Redis counts every command it executes, the ones a Lua script runs included, so two figures are kept: all
commands, and the scripts run (``EVAL``/``EVALSHA``/``FCALL``: one round trip each, whatever they do
inside). The measurement's own ``INFO`` calls are left out. Issue 20's goal (< 0.2 per request, once the
edge admits from leases) is about what the gateway asks Redis per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
OWN_COMMANDS = frozenset({"info"})  # the measurement's


@dataclass(frozen=True)
class RedisCalls:
    commands: int  # every command executed, scripts' own included
    scripts: int  # script runs

    def __sub__(self, other: RedisCalls) -> RedisCalls:
        return RedisCalls(self.commands - other.commands, self.scripts - other.scripts)

    def per_request(self, requests: int) -> tuple[float, float]:
        return self.commands / requests, self.scripts / requests


def calls_of(commandstats: dict[str, dict]) -> RedisCalls:
    """``redis.info("commandstats")`` (``{"cmdstat_get": {"calls": 3, ...}, ...}``) summed."""
    commands = scripts = 0
    for key, stats in commandstats.items():
        name = key.removeprefix("cmdstat_").lower()
        if name in OWN_COMMANDS:
            continue
        calls = int(stats.get("calls", 0))
        commands += calls
        if name in SCRIPT_COMMANDS:
            scripts += calls
    return RedisCalls(commands, scripts)


def gateway_redis_url(state_dir: Path) -> str | None:
    """The Redis ``llmgw run`` started for this state directory (its ``runtime.json``), if any."""
    try:
        return json.loads((state_dir / "runtime.json").read_text()).get("redis_url") or None
    except (OSError, ValueError):
        return None


def read_calls(url: str) -> RedisCalls | None:
    """Redis's counts now; None when it cannot be read (the row then says so, the run goes on)."""
    import redis  # the gateway's own dependency; imported here to keep the pure parts importable alone

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return calls_of(client.info("commandstats"))
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return None
