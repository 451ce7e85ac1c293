"""``GET /api/live``: the web UI's live overview as Server-Sent Events.

With ``Accept: text/event-stream`` (what a browser's ``EventSource`` sends) the answer is a stream:

- ``event: usage`` about every second, and about half a second after a usage event arrives (at most
  every ``MIN_GAP_S``): ``{"at", "scopes": [ScopeUsage...] (as /api/usage/current), "limits",
  "recent", "clients", "errors"}``. ``limits`` is the config's, per provider and model:
  ``{"<provider>": {"limits": {requests_per_minute, ..., cost_per_day (USD as text; null: none)},
  "models": {"<model>": {...}}}}``; ``recent`` the last ≤ 20 usage events, newest first (``id, ts,
  provider, model, status, tokens_in, tokens_out, cost_usd, latency_ms, key_id``, also ``request_id,
  upstream_model, stream, error``); ``errors`` says which service did not answer (the last good
  scopes are sent meanwhile).
- ``event: health`` about every 2 seconds: ``/api/router/state`` (``pinned``, ``smart``, per provider
  its breaker, cooldown, in flight, latency, windows against limits) with ``at`` and ``errors``.

Without it (curl, a test, a poller) the answer is one JSON snapshot ``{"usage", "health"}`` of the
same two payloads.

**Fan-out.** One ``LiveHub`` per ui-api process serves every open stream: ONE core-NATS subscription
on ``llmgw.usage.event.>`` (it sees every event the edges publish; no JetStream consumer) and ONE
periodic query of the usage service's current windows and of the router state, however many browsers
watch. Each stream has a bounded queue (``QUEUE_SIZE``; the oldest chunk is dropped when a client
falls behind, every chunk being a whole snapshot), so a slow client never slows the others. A stream
leaves the hub as soon as its client disconnects; when the last one leaves, the hub unsubscribes and
stops querying. A stream opened with the login cookie ends when its session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, StreamingResponse

from llmgw_common import subjects
from llmgw_common.config import GatewayConfig
from llmgw_common.messages import (
    ProviderState,
    RouterState,
    RouterStateQuery,
    ScopeUsage,
    UsageCurrent,
    UsageCurrentQuery,
    UsageRequests,
    UsageRequestsQuery,
)
from llmgw_common.nats_conn import RemoteError, request as nats_request

log = logging.getLogger("llmgw.ui-api")

router = APIRouter()

INTERVAL_S = 1.0  # usage windows queried this often while someone watches
HEALTH_INTERVAL_S = 2.0  # router state
EVENT_SETTLE_S = 0.5  # after a usage event: query the windows this much later (the usage service's batch)
MIN_GAP_S = 0.5  # never two window queries closer than this
QUERY_TIMEOUT_S = 2.0
RECENT = 20
QUEUE_SIZE = 8  # chunks a client may fall behind before its oldest are dropped
MAX_CLIENTS = 500
KEEPALIVE_S = 15.0
MAX_FOLLOWED_PAGES = 32
ERROR_CHARS = 300


class RecentEvent(BaseModel):
    id: str
    ts: datetime | None = None
    request_id: str | None = None
    provider: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    status: int | None = None
    stream: bool | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: str = "0"
    latency_ms: float | None = None
    key_id: str | None = None
    error: str | None = None


class LiveUsage(BaseModel):
    at: datetime
    scopes: list[ScopeUsage] = Field(default_factory=list)
    limits: dict[str, Any] = Field(default_factory=dict, description="<provider>: {limits, models: {<model>: limits}}")
    recent: list[RecentEvent] = Field(default_factory=list, description="the last usage events, newest first")
    clients: int = Field(default=0, description="open /api/live streams of this ui-api")
    errors: list[str] = Field(default_factory=list, description="services that did not answer")


class LiveHealth(BaseModel):
    at: datetime
    pinned: str | None = None
    smart: bool = False
    providers: list[ProviderState] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class LiveSnapshot(BaseModel):
    usage: LiveUsage
    health: LiveHealth


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _recent(data: dict) -> RecentEvent | None:
    """An event's overview fields (never its bodies), from a stream message or a request-log row."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        return None
    error = data.get("error")
    if isinstance(error, str) and len(error) > ERROR_CHARS:
        error = error[: ERROR_CHARS - 1] + "…"
    try:
        return RecentEvent(
            id=data["id"][:256], ts=data.get("ts"), request_id=data.get("request_id"), provider=data.get("provider"),
            model=data.get("model"), upstream_model=data.get("upstream_model"), status=data.get("status"),
            stream=data.get("stream"), tokens_in=data.get("tokens_in") or 0, tokens_out=data.get("tokens_out") or 0,
            cost_usd=str(data.get("cost_usd") if data.get("cost_usd") is not None else "0"),
            latency_ms=data.get("latency_ms"), key_id=data.get("key_id") or None,
            error=error if isinstance(error, str) else None)
    except Exception:  # noqa: BLE001 - not an event: not shown
        return None


def _sse(event: str, payload: BaseModel) -> bytes:
    return f"event: {event}\ndata: {payload.model_dump_json()}\n\n".encode()


class LiveClient:
    def __init__(self, session_id: str | None):
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.session_id = session_id
        self.dropped = 0

    def offer(self, chunk: bytes) -> None:
        """Never waits: a full queue loses its oldest chunk (each is a whole snapshot)."""
        while True:
            try:
                self.queue.put_nowait(chunk)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


class LiveHub:
    """The one source of every open /api/live stream of this process."""

    def __init__(self, app):
        self.app = app
        self.clients: set[LiveClient] = set()
        self.recent: deque[RecentEvent] = deque(maxlen=RECENT)
        self._seen: set[str] = set()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._event_at: float | None = None
        self.usage: LiveUsage | None = None
        self.health: LiveHealth | None = None
        self._usage_chunk: bytes | None = None
        self._health_chunk: bytes | None = None
        self._scopes: list[ScopeUsage] = []
        self._config_key: int | None = None  # the config revision the limits are of
        self._limits: dict[str, Any] = {}
        self.queries = 0  # window and router-state queries made (for tests and logs)

    # ---- clients ----------------------------------------------------------------------------------

    def join(self, session_id: str | None) -> LiveClient:
        if len(self.clients) >= MAX_CLIENTS:
            raise HTTPException(503, f"too many live streams open ({MAX_CLIENTS}); close some and retry")
        client = LiveClient(session_id)
        self.clients.add(client)
        for chunk in (self._usage_chunk, self._health_chunk):
            if chunk is not None:
                client.offer(chunk)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="live-hub")
        return client

    def leave(self, client: LiveClient) -> None:
        self.clients.discard(client)
        if not self.clients and self._task is not None:
            self._task.cancel()  # its subscription goes with it
            self._task = None
            self._usage_chunk = self._health_chunk = None  # stale by the next viewer

    async def _broadcast(self, chunk: bytes) -> None:
        clients = list(self.clients)
        ended = await self._ended_sessions({c.session_id for c in clients if c.session_id is not None})
        for client in clients:
            if client.session_id in ended:
                client.offer(b"event: end\ndata: {\"reason\": \"session ended\"}\n\n")
                continue
            client.offer(chunk)

    async def _ended_sessions(self, session_ids: set[str]) -> set[str]:
        """Which of the streams' sessions have ended (on any replica: the sessions are shared). Their store
        away, none is taken for ended: no logout can have been recorded meanwhile either."""
        sessions = self.app.state.admin_auth.sessions
        ids = list(session_ids)
        found = await asyncio.gather(*(sessions.get(i) for i in ids), return_exceptions=True)
        return {i for i, session in zip(ids, found) if session is None}

    # ---- sources ----------------------------------------------------------------------------------

    def _add_recent(self, item: RecentEvent | None) -> None:
        if item is None or item.id in self._seen:
            return  # a publish retried by the edge arrives twice
        if len(self.recent) == self.recent.maxlen:
            self._seen.discard(self.recent[0].id)
        self.recent.append(item)
        self._seen.add(item.id)

    async def _on_event(self, msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        before = len(self._seen)
        self._add_recent(_recent(data))
        if len(self._seen) != before and self._event_at is None:
            self._event_at = asyncio.get_running_loop().time()
            self._wake.set()

    def _config_limits(self) -> dict[str, Any]:
        """Per provider and model, the configured limits of the config revision running (recomputed when
        the revision changes)."""
        follower = self.app.state.config_follower
        if follower.revision != self._config_key:
            self._limits = limits_of(follower.config)
            self._config_key = follower.revision
        return self._limits

    async def _ask(self, subject: str, msg, reply_type, service: str, errors: list[str]):
        try:
            return await nats_request(self.app.state.nc, subject, msg, reply_type,
                                      min(QUERY_TIMEOUT_S, self.app.state.settings.query_timeout_s))
        except (NatsTimeoutError, NoRespondersError):
            errors.append(f"{service} is not answering")
        except RemoteError as exc:
            errors.append(f"{service}: {str(exc)[:200]}")
        except Exception as exc:  # noqa: BLE001 - NATS away: said in the payload, the stream goes on
            errors.append(f"{service}: {type(exc).__name__}")
        return None

    async def query_usage(self) -> LiveUsage:
        errors: list[str] = []
        self.queries += 1
        reply = await self._ask(subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent, "the usage service",
                                errors)
        if reply is not None:
            scopes, pages = list(reply.scopes), 1
            while reply is not None and reply.next_cursor is not None and pages < MAX_FOLLOWED_PAGES:
                reply = await self._ask(subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(cursor=reply.next_cursor),
                                        UsageCurrent, "the usage service", errors)
                if reply is not None:
                    scopes += reply.scopes
                pages += 1
            if not errors:
                self._scopes = scopes
        return LiveUsage(at=_now(), scopes=self._scopes, limits=self._config_limits(),
                         recent=list(reversed(self.recent)), clients=len(self.clients), errors=errors)

    async def query_health(self) -> LiveHealth:
        errors: list[str] = []
        self.queries += 1
        state = await self._ask(subjects.ROUTER_STATE, RouterStateQuery(), RouterState, "the router", errors)
        if state is None:
            last = self.health
            return LiveHealth(at=_now(), pinned=last.pinned if last else None, smart=last.smart if last else False,
                              providers=last.providers if last else [], errors=errors)
        return LiveHealth(at=_now(), pinned=state.pinned, smart=state.smart, providers=state.providers)

    async def _seed_recent(self) -> None:
        """The request log's newest rows, when the hub starts with no events of its own yet."""
        errors: list[str] = []
        page = await self._ask(subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(limit=RECENT), UsageRequests,
                               "the usage service", errors)
        if page is None:
            return
        for row in reversed(page.rows):  # oldest first: the deque's order
            self._add_recent(_recent(row.model_dump(mode="json")))

    async def snapshot(self) -> LiveSnapshot:
        """For a plain GET: the hub's latest payloads when it runs, else one query of each."""
        if self.usage is not None and self.health is not None and self._task is not None:
            return LiveSnapshot(usage=self.usage, health=self.health)
        usage, health = await asyncio.gather(self.query_usage(), self.query_health())
        return LiveSnapshot(usage=usage, health=health)

    # ---- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sub = await self.app.state.nc.subscribe(subjects.USAGE_EVENT_WILDCARD, cb=self._on_event)
        try:
            if not self.recent:
                await self._seed_recent()
            next_usage = next_health = last_usage = 0.0
            while True:
                self._wake.clear()
                now = loop.time()
                if self._event_at is not None:  # an event: the windows a little later, not at the next tick
                    next_usage = min(next_usage, max(self._event_at + EVENT_SETTLE_S, last_usage + MIN_GAP_S))
                jobs = []
                if now >= next_usage:
                    self._event_at = None
                    last_usage, next_usage = now, now + INTERVAL_S
                    jobs.append(self._tick_usage())
                if now >= next_health:
                    next_health = now + HEALTH_INTERVAL_S
                    jobs.append(self._tick_health())
                if jobs:
                    await asyncio.gather(*jobs)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(next_usage, next_health) - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - never seen; the next viewer starts a new loop
            log.exception("the live overview loop failed")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _tick_usage(self) -> None:
        self.usage = await self.query_usage()
        self._usage_chunk = _sse("usage", self.usage)
        await self._broadcast(self._usage_chunk)

    async def _tick_health(self) -> None:
        self.health = await self.query_health()
        self._health_chunk = _sse("health", self.health)
        await self._broadcast(self._health_chunk)


def limits_of(config: GatewayConfig) -> dict[str, Any]:
    return {p.id: {"limits": p.limits.model_dump(mode="json"),
                   "models": {m.name: m.limits.model_dump(mode="json") for m in p.models}}
            for p in config.providers}


def hub_of(app) -> LiveHub:
    hub = getattr(app.state, "live_hub", None)
    if hub is None:
        hub = app.state.live_hub = LiveHub(app)
    return hub


class EventStream(StreamingResponse):
    """A stream that ends as soon as the client goes away, whatever the server's ASGI spec version (a
    client that only listens sends nothing, so only the disconnect message tells)."""

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            async def disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(disconnect)


def _wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


LIVE_DESCRIPTION = ("With `Accept: text/event-stream`: Server-Sent Events, `event: usage` (a LiveUsage) about "
                    "every second and `event: health` (a LiveHealth) about every 2 seconds, shared by every "
                    "open stream. Otherwise one LiveSnapshot as JSON.")


@router.get("/api/live", response_model=LiveSnapshot, description=LIVE_DESCRIPTION)
async def live(request: Request):
    if request.query_params:
        raise HTTPException(400, "GET /api/live takes no query parameters")
    hub = hub_of(request.app)
    if not _wants_stream(request):
        return JSONResponse((await hub.snapshot()).model_dump(mode="json"))
    client = hub.join(request.scope.get("state", {}).get("admin_session"))

    async def chunks():
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    chunk = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    chunk = b": keep-alive\n\n"
                yield chunk
                if chunk.startswith(b"event: end\n"):
                    return
        finally:
            hub.leave(client)

    return EventStream(chunks(), media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
