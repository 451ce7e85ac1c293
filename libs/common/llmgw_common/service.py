"""One service runtime: how every NATS service starts, answers, reloads its config and stops.

A service builds a ``ServiceRuntime``, declares its endpoints (typed handlers: a request message in, a
reply message out, ``ServiceError`` for a refusal), its plain subscriptions, config listeners, background
loops and clean-up steps, then calls ``run(load)``:

1. ``load()`` reads whatever shared state the answers depend on (retried until it succeeds): no replica
   answers a question before it knows the pin, the smart flag, its prices...;
2. only then are the subscriptions made and the micro service registered (``nats.micro``, version from
   the package metadata), and the background loops started;
3. on SIGINT/SIGTERM (or the ``stop`` event tests pass) it stops in order: background loops, endpoints
   and subscriptions, handlers still in hand (bounded), the service's own stop steps, the NATS drain,
   then the service's close steps (connections, stores).

Its health: with ``LLMGW_METRICS_PORT`` set, the operations port (``ops_port``: ``/livez``, ``/readyz``,
``/healthz``, ``/metrics``) listens from before ``load()``, so a service waiting for Redis or a schema is
alive but not ready. Ready means: its NATS connection is up, ``load()`` is done and it serves, and every
check the service declared with ``health_check`` passes (a check declared ``degraded`` only makes it
"degraded", still ready).

The config comes from the config bucket (``config_bucket``): ``load_config()`` seeds it from the file when it
is empty and loads the current revision; once serving, every new revision goes to the ``on_config``
listeners. The edge and ui-api are HTTP apps, not micro services; they share ``config_follower`` and
``run_steps``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Protocol, Sequence, cast

import msgspec
import uvloop
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from pydantic import ValidationError

from . import health, metrics, ops_port, tracing
from .config import ConfigError, GatewayConfig
from .config_bucket import ConfigFollower, ConfigListener
from .lifecycle import wait_for_stop
from .logs import setup_logging
from .nats_conn import connect_nats

log = logging.getLogger("llmgw.service")

LOAD_RETRY_S = 1.0  # between attempts at ``load`` (Redis or NATS not there yet)
HANDLERS_GRACE_S = 5.0  # how long answers in hand may take to go out at stop
DRAIN_TIMEOUT_S = 10.0


class ServiceError(Exception):
    """A handler's refusal: answered as a micro-service error (``Nats-Service-Error-Code`` = ``status``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Decodable(Protocol):
    """A message type: pydantic ``Message`` or msgspec struct with a ``decode(bytes)`` class method."""

    @classmethod
    def decode(cls, data: bytes) -> Any: ...


@functools.cache
def package_version() -> str:
    """The installed llmgw version (what ``$SRV.INFO`` shows), not a literal kept by hand."""
    try:
        return importlib.metadata.version("llmgw")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


def bad_request(exc: Exception) -> str:
    """A short, safe description of an undecodable request (never a trace, never the request itself)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(x) for x in err["loc"]) or "<body>"
            parts.append(f"{loc}: {err['msg']}")
        return "invalid request: " + "; ".join(parts)
    if isinstance(exc, msgspec.DecodeError):
        return "invalid request: " + str(exc).splitlines()[0]
    return "invalid request"


# ---- shared by every process: the config, ordered steps ----------------------------------------------

def config_follower() -> ConfigFollower:
    """A process's view of the config bucket, its revision exported as ``llmgw_config_revision``."""
    return ConfigFollower(on_revision=metrics.config_revision().set)


def instance_id() -> str:
    """This process among the replicas (``LLMGW_REPLICA_ID`` when set: compose, the runner)."""
    return os.environ.get("LLMGW_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"


Step = tuple[str, Callable[[], Awaitable[Any] | Any]]


async def run_steps(steps: Sequence[Step]) -> None:
    """Run stop steps in order; a failing step is logged and the next still runs."""
    for name, step in steps:
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001
            log.warning("stopping %s: %s: %s", name, type(exc).__name__, exc)


# ---- the runtime --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Endpoint:
    name: str
    subject: str
    request_type: type[Decodable]
    handler: Callable[[Any], Awaitable[Any]]
    concurrent: bool  # each request in its own task (a subscription otherwise handles one at a time)
    span: str | None  # while tracing is on: a SERVER span of this name, child of the caller's context
    observe: Callable[[Any, Any, float], None] | None  # (request, reply or None when it failed, seconds)
    failure: ServiceError | None  # the answer to an unexpected exception (None: a plain 500)


class ServiceRuntime:
    def __init__(self, name: str, description: str, nats_url: str, config_path: os.PathLike[str] | str,
                 queue_group: str | None = None):
        self.name = name
        self.description = description
        self.nats_url = nats_url
        self.config_path = config_path
        self.queue_group = queue_group or name
        self.nc: NATS | None = None
        self._endpoints: list[_Endpoint] = []
        self._subscriptions: list[tuple[str, Callable, str | None]] = []
        self._config_listeners: list[ConfigListener] = []
        self._loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._stop_steps: list[Step] = []
        self._close_steps: list[Step] = []
        self._in_hand: set[asyncio.Task] = set()
        self._checks: list[health.Check] = []
        self._degraded: list[str] = []  # checks that make it "degraded", not unready
        self.serving = False  # ``load()`` done, endpoints registered
        self.config = config_follower()

    # ---- declarations (before run) ---------------------------------------------------------------------

    async def connect(self) -> NATS:
        self.nc = await connect_nats(self.nats_url, f"llmgw-{self.name}")
        return self.nc

    async def load_config(self) -> GatewayConfig:
        """The current config from the bucket (seeded from ``config_path`` when the bucket has none)."""
        nc = self.nc or await self.connect()
        return await self.config.start(nc.jetstream(), self.config_path)

    def endpoint(self, name: str, subject: str, request_type: type[Decodable],
                 handler: Callable[[Any], Awaitable[Any]], *, concurrent: bool = False,
                 span: str | None = None, observe: Callable[[Any, Any, float], None] | None = None,
                 failure: ServiceError | None = None) -> None:
        """A request/reply endpoint: ``handler(request) -> reply`` (anything with ``encode()``).

        ``observe(request, reply, seconds)`` is called after each handler (reply None when it raised), inside
        its span: the service's own metrics, without a wrapper around the handler on the hot path."""
        self._endpoints.append(_Endpoint(name, subject, request_type, handler, concurrent, span, observe, failure))

    def subscribe(self, subject: str, cb: Callable, queue: str | None = None) -> None:
        self._subscriptions.append((subject, cb, queue))

    def on_config(self, listener: ConfigListener) -> None:
        self._config_listeners.append(listener)

    def loop(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A background loop, started once serving, cancelled first at stop."""
        self._loops.append((name, body))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """A piece of work in hand that the stop waits for (bounded) before draining NATS."""
        task = asyncio.get_running_loop().create_task(coro)
        self._in_hand.add(task)
        task.add_done_callback(self._in_hand.discard)
        return task

    def health_check(self, name: str, probe: health.Probe, *, degraded: bool = False,
                     timeout_s: float = health.DEFAULT_TIMEOUT_S) -> None:
        """A dependency readiness needs (``degraded``: one whose failure leaves the service ready, but says
        it is degraded: a part of its work waits, the rest goes on)."""
        self._checks.append(health.Check(name, probe, timeout_s=timeout_s))
        if degraded:
            self._degraded.append(name)

    def health(self, nc: NATS) -> health.HealthMonitor:
        """Every check of this service: its NATS connection, serving, the declared ones, its config."""
        async def serving() -> str:
            if not self.serving:
                raise health.CheckFailed("loading its state (see its log)")
            return f"{len(self._endpoints)} endpoints"

        return health.HealthMonitor([
            health.Check("nats", health.nats_connected(nc)), health.Check("serving", serving), *self._checks,
            health.Check("config", health.config_revision(self.config), required=False)])

    def on_stop(self, name: str, step: Callable[[], Any]) -> None:
        """A step after the endpoints stopped, before NATS drains (consumers, mirrors)."""
        self._stop_steps.append((name, step))

    def on_close(self, name: str, step: Callable[[], Any]) -> None:
        """A step after NATS drained (connections, stores), in the order declared."""
        self._close_steps.append((name, step))

    # ---- answering -------------------------------------------------------------------------------------

    def _handler(self, ep: _Endpoint) -> Callable[[Request], Awaitable[None]]:
        # while tracing is on, a SERVER span (``tracing.serving`` hands the coroutine back untouched when off)
        scope = f"llmgw.{self.name}"

        def answer(req: Request) -> Coroutine[Any, Any, None]:
            reply = self._reply(ep, req)
            if ep.span is None:
                return reply
            return cast(Coroutine[Any, Any, None], tracing.serving(reply, scope, ep.span, req.headers))

        if not ep.concurrent:
            return answer

        async def in_own_task(req: Request) -> None:
            self.spawn(answer(req))

        return in_own_task

    async def _reply(self, ep: _Endpoint, req: Request) -> None:
        try:
            message = ep.request_type.decode(req.data or b"{}")
        except ValueError as exc:  # pydantic's ValidationError and msgspec's errors are ValueErrors
            await req.respond_error("400", bad_request(exc))
            return
        t0 = time.perf_counter()
        try:
            reply = await ep.handler(message)
        except ServiceError as exc:
            if ep.observe is not None:
                ep.observe(message, None, time.perf_counter() - t0)
            await req.respond_error(str(exc.status), exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - a clean error, the trace in our log only
            if ep.observe is not None:
                ep.observe(message, None, time.perf_counter() - t0)
            log.exception("%s %s failed", self.name, ep.name)
            failure = ep.failure or ServiceError(500, f"{self.name} {ep.name} failed: {type(exc).__name__}")
            await req.respond_error(str(failure.status), failure.message)
            return
        if ep.observe is not None:
            ep.observe(message, reply, time.perf_counter() - t0)
        await req.respond(reply.encode())

    # ---- life ------------------------------------------------------------------------------------------

    async def _load(self, load: Callable[[], Awaitable[None]], stop: asyncio.Event, retry: bool) -> bool:
        """``load`` until it succeeds (once when not ``retry``: its error ends the service); False when asked
        to stop first."""
        if not retry:
            await load()
            return True
        while not stop.is_set():
            try:
                await load()
                return True
            except Exception as exc:  # noqa: BLE001
                log.warning("%s cannot load its state yet (%s: %s); retrying", self.name, type(exc).__name__, exc)
            try:
                await asyncio.wait_for(stop.wait(), LOAD_RETRY_S)
            except TimeoutError:
                pass
        return False

    async def run(self, load: Callable[[], Awaitable[None]] | None = None,
                  stop: asyncio.Event | None = None, retry_load: bool = True) -> None:
        """Load, serve until ``stop`` is set (SIGINT/SIGTERM when None), stop in order."""
        nc = self.nc or await self.connect()
        stop_event = stop or asyncio.Event()
        waiter = asyncio.create_task(wait_for_stop(stop_event) if stop is None else stop_event.wait())
        service = None
        subs = []
        loops: list[asyncio.Task] = []
        checks = self.health(nc)
        ready = [c.name for c in checks.checks if c.required and c.name not in self._degraded]
        ops = await ops_port.start_from_env(checks.report, ready=ready, degraded=self._degraded)
        try:
            if not self.config.started:
                await self.load_config()
            if load is not None and not await self._load(load, stop_event, retry_load):
                return
            for subject, cb, queue in self._subscriptions:
                subs.append(await nc.subscribe(subject, queue=queue or "", cb=cb))
            self.config.follow(self._config_listeners)
            subs.append(await self.config.answer_revisions(nc, self.name, instance_id()))
            if self._endpoints:
                service = await add_service(nc, name=self.name, version=package_version(),
                                            description=self.description, queue_group=self.queue_group)
                for ep in self._endpoints:
                    await service.add_endpoint(name=ep.name, subject=ep.subject, handler=self._handler(ep))
            loops = [asyncio.create_task(body(), name=f"{self.name}-{name}") for name, body in self._loops]
            await nc.flush()
            self.serving = True
            log.info("%s service ready (%d endpoints, version %s)", self.name, len(self._endpoints), package_version())
            await waiter
            log.info("%s service stopping", self.name)
        finally:
            waiter.cancel()
            self.serving = False
            await self._stop(nc, service, subs, loops)
            if ops is not None:
                await ops.stop()

    async def _stop(self, nc: NATS, service, subs, loops: list[asyncio.Task]) -> None:
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.gather(*loops, return_exceptions=True)
        steps: list[Step] = []
        if service is not None:
            steps.append(("endpoints", service.stop))
        steps += [(f"subscription {s.subject}", s.unsubscribe) for s in subs]
        await run_steps(steps)
        if self._in_hand:  # let answers in hand go out before the connection drains
            await asyncio.wait(set(self._in_hand), timeout=HANDLERS_GRACE_S)
        await run_steps([*self._stop_steps, ("config follower", self.config.stop)])
        await run_steps([("nats", lambda: _drain(nc))])
        await run_steps(self._close_steps)


async def _drain(nc: NATS) -> None:
    try:
        await asyncio.wait_for(nc.drain(), DRAIN_TIMEOUT_S)
    finally:
        if not nc.is_closed:
            await nc.close()


def main(name: str, serve: Callable[[], Coroutine[Any, Any, None]], log_level: str) -> None:
    """A service process: logs, tracing, a uvloop event loop (its operations port is ``ServiceRuntime.run``'s)."""
    setup_logging(name, log_level)
    tracing.setup(name)
    try:
        uvloop.run(serve())  # uvloop: a faster event loop, as the HTTP services use
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # a setting it cannot start with (an environment variable): its path, no trace
        logging.getLogger(f"llmgw.{name}").error("%s", exc)
        raise SystemExit(1) from None
