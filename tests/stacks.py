"""Helpers for tests that run the whole gateway: a stack of real service processes, polling."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from llmgw_cli.infra import free_port
from llmgw_cli.runner import Stack


@contextlib.contextmanager
def running_stack(root: Path, config_text: str, env: dict[str, str]):
    """Every service as a child process (what ``llmgw run`` starts) against the test's NATS and Redis."""
    config = root / "llmgw.yaml"
    config.write_text(config_text)
    stack = Stack(config, root / "state", edge_port=free_port(), ui_port=free_port(), env=env,
                  log_file=root / "stack.log")
    try:
        stack.start(ready_timeout=90)
    except Exception:
        print((root / "stack.log").read_text())
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(fn, timeout=20.0, interval=0.2):
    """Poll until ``fn`` returns a truthy value (eventual consistency, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def clear_router_health(redis_url: str) -> None:
    """Cooldowns, breakers and the pin are shared state in Redis: each test starts healthy."""
    import redis

    r = redis.Redis.from_url(redis_url)
    for pattern in ("llmgw:cool:*", "llmgw:brk:*", "llmgw:probe:*", "llmgw:fail:*", "llmgw:pin", "llmgw:smart"):
        for key in r.scan_iter(pattern):
            r.delete(key)
    r.close()
