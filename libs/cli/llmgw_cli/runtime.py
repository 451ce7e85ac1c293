"""Where a running ``llmgw run`` put its servers: ``<state dir>/runtime.json``, written by the runner and
removed when it stops.

The CLI's other commands (``llmgw keys``, ``replay``, ``events``) find the gateway's NATS and Redis
through it, so they work against ``make run`` with nothing to pass; an explicit ``--nats-url`` /
``--redis-url`` or ``NATS_URL`` / ``REDIS_URL`` wins. There is no default server: a NATS or Redis on the
standard port may belong to something else, and a command must not read or write it by accident. A
runtime file whose runner has exited (killed, machine restarted) means "not running" too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUNTIME_FILE = "runtime.json"
CONNECT_TIMEOUT_S = 2  # per attempt; the whole connect gives up after CONNECT_DEADLINE_S
CONNECT_DEADLINE_S = 5
_HOW_TO_START = "start it with make run, or set NATS_URL (or --nats-url)"


class NotRunning(Exception):
    """No gateway to talk to; the message is one line saying why and what to do."""


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _runtime_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir).resolve() / RUNTIME_FILE


def running(state_dir: str | os.PathLike[str]) -> dict:
    """The runtime file of a live ``llmgw run`` in ``state_dir``; {} when there is none or its runner exited."""
    try:
        data = json.loads(_runtime_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not _pid_alive(data.get("pid")):
        return {}
    return data


def _not_found(state_dir: str | os.PathLike[str]) -> NotRunning:
    path = _runtime_path(state_dir)
    why = f"its runner has exited, {path} is stale" if path.exists() else f"no {path}"
    return NotRunning(f"the gateway is not running ({why}): {_HOW_TO_START}")


def nats_url(explicit: str | None, state_dir: str | os.PathLike[str]) -> str:
    """``--nats-url``, else ``NATS_URL``, else the running gateway's; ``NotRunning`` when none."""
    found = explicit or os.environ.get("NATS_URL") or running(state_dir).get("nats_url")
    if not found:
        raise _not_found(state_dir)
    return found


def redis_url(explicit: str | None, state_dir: str | os.PathLike[str]) -> str | None:
    """``--redis-url``, else ``REDIS_URL``, else the running gateway's; None when none (the caller says so
    if it needs Redis)."""
    return explicit or os.environ.get("REDIS_URL") or running(state_dir).get("redis_url") or None


async def connect_nats(url: str, name: str = "llmgw-cli"):
    """A NATS connection for a one-shot command (``llmgw_common.nats_conn.connect_once``: a couple of attempts
    within ``CONNECT_DEADLINE_S``, no reconnects); ``NotRunning`` when nothing answers."""
    from llmgw_common.nats_conn import NatsUnreachable, connect_once

    try:
        return await connect_once(url, name, CONNECT_TIMEOUT_S, CONNECT_DEADLINE_S)
    except NatsUnreachable as exc:
        raise not_running(exc) from None


def not_running(exc: Exception) -> NotRunning:
    """A one-shot connect that found no NATS (``NatsUnreachable``), said as what it means to the user."""
    return NotRunning(f"the gateway is not running: {exc}; {_HOW_TO_START}")


def shown(url: str) -> str:
    """A server URL fit to print: without the user and password it may carry (``nats://u:p@host``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
