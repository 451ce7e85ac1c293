"""Dependency health checks shared by the HTTP services (edge ``/healthz``, ui-api ``/api/health``).

A check is a small async probe that returns a short detail when its dependency works and raises when
it does not; ``HealthMonitor`` runs a service's probes concurrently, each bounded by its own timeout,
and caches the report for ``ttl_s`` (health endpoints get polled: a burst of polls costs one round of
probes, and concurrent polls share it). A report is ``ok`` when every *required* check passed; the
endpoints answer 200 then, else 503, with the checks in a JSON body::

    {"status": "ok" | "degraded", "checked_at": "...", "checks": {
        "nats": {"ok": true, "required": true, "detail": "connected to nats://127.0.0.1:4222", "ms": 0.0},
        "redis": {"ok": false, "required": true, "detail": "ConnectionError: Error 111 connecting ...", ...}}}

The probes (``nats_connected``, ``jetstream``, ``redis_ping``, ``service_ping``, ``clickhouse_via_usage``)
are what the services need; see docs/reliability.md for which service checks what.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from . import subjects
from .messages import UsageRequests, UsageRequestsQuery
from .nats_conn import RemoteError, request

Probe = Callable[[], Awaitable[str]]

DEFAULT_TTL_S = 1.0
DEFAULT_TIMEOUT_S = 1.0


class CheckFailed(Exception):
    """A probe's dependency answered, but not well (the message is the check's detail)."""


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe
    required: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    required: bool
    detail: str
    ms: float

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "required": self.required, "detail": self.detail, "ms": round(self.ms, 1)}


@dataclass
class HealthReport:
    checks: list[CheckResult]
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    @property
    def status_code(self) -> int:
        return 200 if self.ok else 503

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "degraded", "checked_at": self.checked_at.isoformat(),
                "checks": {c.name: c.as_json() for c in self.checks}, **extra}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):  # its message is the detail
        return str(exc)[:200]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:200] if text and text != name else name


async def _run(check: Check) -> CheckResult:
    start = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check.probe(), check.timeout_s)
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {check.timeout_s:g}s"
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is its check's answer
        ok, detail = False, _describe(exc)
    return CheckResult(check.name, ok, check.required, detail, (time.perf_counter() - start) * 1000)


class HealthMonitor:
    """A service's checks, run together at most once per ``ttl_s``; concurrent callers share a round."""

    def __init__(self, checks: list[Check], ttl_s: float = DEFAULT_TTL_S):
        self.checks = list(checks)
        self.ttl_s = ttl_s
        self._report: HealthReport | None = None
        self._at = 0.0
        self._round: asyncio.Task | None = None

    async def report(self) -> HealthReport:
        if self._report is not None and time.monotonic() - self._at < self.ttl_s:
            return self._report
        if self._round is None or self._round.done():
            self._round = asyncio.get_running_loop().create_task(self._check_all())
        # shielded: a poller that hangs up must not cancel the round the others wait for
        return await asyncio.shield(self._round)

    async def _check_all(self) -> HealthReport:
        results = await asyncio.gather(*(_run(c) for c in self.checks))
        self._report, self._at = HealthReport(list(results)), time.monotonic()
        return self._report


# ---- probes ---------------------------------------------------------------------------------------


def _require_connected(nc) -> None:
    if not nc.is_connected:
        raise CheckFailed("reconnecting" if nc.is_reconnecting else "not connected")


def nats_connected(nc) -> Probe:
    """The service's own NATS connection is up (not reconnecting)."""

    async def probe() -> str:
        _require_connected(nc)
        url = nc.connected_url
        return f"connected to {url.scheme}://{url.hostname}:{url.port}" if url else "connected"

    return probe


def jetstream(nc, timeout_s: float = DEFAULT_TIMEOUT_S) -> Probe:
    """JetStream answers an account info request (the usage stream's server is up and has JetStream)."""

    async def probe() -> str:
        _require_connected(nc)
        info = await nc.jetstream(timeout=timeout_s).account_info()
        return f"{info.streams} stream(s)"

    return probe


def redis_ping(redis) -> Probe:
    """Redis answers PING (routing state, limits and live windows live there)."""

    async def probe() -> str:
        await redis.ping()
        return "PONG"

    return probe


def service_ping(nc, service: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Probe:
    """Some replica of a NATS micro-service answers ``$SRV.PING.<service>``."""

    async def probe() -> str:
        _require_connected(nc)
        msg = await nc.request(f"$SRV.PING.{service}", b"", timeout=timeout_s)
        try:
            info = json.loads(msg.data)
            return f"{info.get('name', service)} {info.get('version', '')} ({info.get('id', '?')[:8]})".strip()
        except ValueError:
            return "pong"

    return probe


def clickhouse_via_usage(nc, timeout_s: float = 2.0) -> Probe:
    """ClickHouse works, as the usage service (its only user) sees it: a one-row request log query over
    the last second (cheap: a range of the table's order key). No usage replica answering fails it too."""

    async def probe() -> str:
        _require_connected(nc)
        now = datetime.now(timezone.utc)
        query = UsageRequestsQuery(since=now - timedelta(seconds=1), limit=1)
        try:
            await request(nc, subjects.USAGE_QUERY_REQUESTS, query, UsageRequests, timeout_s)
        except RemoteError as exc:
            raise CheckFailed(f"usage service: {exc}") from None
        return "usage service queried it"

    return probe


def config_revision(follower) -> Probe:
    """The config revision running (a ``ConfigFollower``): informational, never a reason to be degraded."""

    async def probe() -> str:
        if follower.latest > follower.revision:
            return f"revision {follower.revision} (revision {follower.latest} is invalid: not applied)"
        return f"revision {follower.revision}"

    return probe


def changes(before: dict[str, bool], after: dict[str, bool]) -> list[tuple[str, bool]]:
    """The checks whose state differs between two polls (a check absent before counts as up)."""
    return [(name, ok) for name, ok in after.items() if before.get(name, True) != ok]
