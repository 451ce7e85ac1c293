"""The operations port of every service: metrics and health, off the public port.

With ``LLMGW_METRICS_PORT`` set (host ``LLMGW_METRICS_HOST``, default 0.0.0.0), the service answers on that
port, for Prometheus and the orchestrator inside the network only:

- ``GET /livez``: 200 while the process's event loop answers (liveness: restart it when this fails);
- ``GET /readyz``: 200 when the service's own connections are up (``ready`` checks of its health report),
  else 503 (readiness: send it no traffic meanwhile); a ``degraded`` check that fails leaves it 200 with the
  status "degraded" (the usage service while ClickHouse is away: its windows still run);
- ``GET /healthz``: the detailed health report (every check, with its detail);
- ``GET /metrics``: the Prometheus exposition.

The public port then keeps ``/healthz`` as a bare ``{"status": ...}`` (no addresses, no error texts) and
answers ``/metrics`` with its usual 404 (``public_port``). Unset (``llmgw run``, tests): no operations port,
and the public port serves both as before. The NATS services (router, usage, pricing) have no public port:
``ServiceRuntime`` serves this one.

A small HTTP/1.1 server on asyncio, one request per connection: its clients are scrapers and probes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .health import HealthReport
from .metrics import METRICS_HOST_ENV, METRICS_PATH, METRICS_PORT_ENV, exposition

log = logging.getLogger(__name__)

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
READ_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def configured(env: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """(host, port) of the operations port when ``LLMGW_METRICS_PORT`` is set, else None."""
    env = os.environ if env is None else env
    port = (env.get(METRICS_PORT_ENV) or "").strip()
    if not port:
        return None
    return env.get(METRICS_HOST_ENV) or "0.0.0.0", int(port)


class OpsServer:
    """Serves ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics`` from ``report`` (the service's cached
    health report) on its own port. ``ready`` names the checks readiness needs: the service's own
    connections, not the services behind them (a router away is a 503 from the edge, not a reason to take
    every edge out of the load balancer)."""

    def __init__(self, report: Callable[[], Awaitable[HealthReport]], ready: Sequence[str], host: str, port: int,
                 degraded: Sequence[str] = ()):
        self.report = report
        self.ready = tuple(ready)
        self.degraded = tuple(degraded)
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Listen; a port that cannot be bound is logged and skipped (health never stops a service)."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            log.warning("no operations port on %s:%d (%s)", self.host, self.port, exc)
            return False
        log.info("metrics and health on http://%s:%d (%s, %s, %s, %s)", self.host, self.port, LIVE_PATH,
                 READY_PATH, HEALTH_PATH, METRICS_PATH)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path = _request_line(head)
            status, content_type, body = await self._answer(method, path)
            writer.write(_response(status, content_type, b"" if method == "HEAD" else body, len(body)))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a client that sends no proper request gets no answer
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"GET only\n"
        if path == LIVE_PATH:
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == METRICS_PATH:
            body, content_type = exposition()
            return 200, content_type, body
        if path == READY_PATH:
            report = await self.report()
            checks = {name: report.check(name) for name in self.ready}
            ok = all(c is not None and c.ok for c in checks.values())
            optional = {name: report.check(name) for name in self.degraded}
            checks.update(optional)
            status = ("ready" if all(c is not None and c.ok for c in optional.values()) else "degraded") \
                if ok else "not ready"
            readiness = {"status": status,
                         "checks": {name: c.as_json() if c else None for name, c in checks.items()}}
            return (200 if ok else 503), "application/json", json.dumps(readiness).encode()
        if path == HEALTH_PATH:
            report = await self.report()
            return report.status_code, "application/json", json.dumps(report.body()).encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError("request head too long")
    method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method, target.split("?", 1)[0]


def _response(status: int, content_type: str, body: bytes, length: int) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {length}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


async def start_from_env(report: Callable[[], Awaitable[HealthReport]], ready: Sequence[str],
                         env: Mapping[str, str] | None = None, degraded: Sequence[str] = ()) -> OpsServer | None:
    """The service's operations port when ``LLMGW_METRICS_PORT`` asks for one (None otherwise)."""
    where = configured(env)
    if where is None:
        return None
    server = OpsServer(report, ready, *where, degraded=degraded)
    return server if await server.start() else None


def public_port(app: Any, not_found: Any, env: Mapping[str, str] | None = None) -> Any:
    """``app`` for the public port: with an operations port configured, ``GET /metrics`` goes to
    ``not_found`` (the service's own 404, in its error format) instead of ``app``'s exposition."""
    if configured(env) is None:
        return app

    async def public(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS_PATH:
            await not_found(scope, receive, send)
        else:
            await app(scope, receive, send)

    return public


def public_health(report: HealthReport, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The public ``/healthz`` body: the whole report without an operations port, else its status only."""
    return report.body() if configured(env) is None else {"status": report.body()["status"]}
