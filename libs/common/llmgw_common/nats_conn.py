"""NATS / JetStream connection helpers shared by every service."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypeVar, cast

import nats
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from . import metrics, subjects, tracing
from .config import mask_url
from .jetstream import ensure_stream
from .messages import FastMessage, Message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message | FastMessage)  # a reply: pydantic, or msgspec on the hot path


# Reconnection (docs/reliability.md): a service never gives up on NATS, and notices a dead server fast.
RECONNECT_WAIT_S = 0.5  # between attempts at the same server: a restarted nats-server is back in about a second
PING_INTERVAL_S = 5  # a connection whose server stopped answering (no FIN/RST: host gone, network cut) ...
MAX_OUTSTANDING_PINGS = 2  # ... is declared stale after two unanswered pings, then reconnected
CONNECT_TIMEOUT_S = 2


def server_urls(url: str) -> list[str]:
    """``NATS_URL`` as the list of servers it names: one URL, or a cluster's comma-separated (as the nats CLI
    takes it). nats-py takes a single string as one server, so each node must be handed over on its own:
    a service starts while any of them answers."""
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect_nats(url: str, name: str) -> NATS:
    """Connect with endless reconnects: a NATS restart must not kill a service, nor need it restarted.

    The first connection is retried forever too (``max_reconnect_attempts=-1``): a service started while
    nats-server is down waits for it. Publishes made while reconnecting are buffered (nats-py's 2 MiB
    pending buffer) and sent after the reconnect: acks and fire-and-forget events survive a short outage.
    Requests are not: ``request`` refuses at once while disconnected (see ``NotConnectedError``).
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc or type(exc).__name__)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        connect_timeout=CONNECT_TIMEOUT_S,
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


class NatsUnreachable(ConnectionError):
    """No NATS answered a one-shot command's connect; the message says where (no credentials) and why."""


async def connect_once(url: str, name: str, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                       deadline_s: float = 5) -> NATS:
    """A NATS connection for a one-shot command (``llmgw keys``, ``replay``, ``events``): a couple of attempts
    within ``deadline_s``, no reconnects, nothing logged per attempt; ``NatsUnreachable`` when none answers.

    Not ``connect_nats``: a service waits for NATS forever, a command must not. (In nats-py
    ``max_reconnect_attempts=0`` means "retry forever", so it is 1 here.)
    """

    async def quiet(_exc: Exception) -> None:  # the failure is reported once, by the caller
        pass

    try:
        return await asyncio.wait_for(
            nats.connect(server_urls(url), name=name, connect_timeout=connect_timeout_s, allow_reconnect=False,
                         max_reconnect_attempts=1, reconnect_time_wait=0.5, error_cb=quiet),
            deadline_s)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, no servers, TLS, auth: all the same to the user
        detail = str(exc).strip() or type(exc).__name__
        raise NatsUnreachable(f"no NATS answers at {', '.join(map(mask_url, server_urls(url)))} ({detail})") from None


class NotConnectedError(NoRespondersError):
    """A request made while the connection to NATS is down: nobody can answer it now.

    Raised at once instead of buffering the request until the reconnect: the caller answers its own
    client with a clean 503 now, and no service acts later on a request its sender has given up on (a
    routing decision answered after the edge's timeout would hold a reservation nobody releases). A
    subclass of ``NoRespondersError``, so every caller that maps "no responders" to 503 handles it.
    """

    def __str__(self) -> str:
        return "nats: not connected"


class RemoteError(Exception):
    """A service answered with an ErrorReply."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


async def request(nc: NATS, subject: str, msg: Message | FastMessage, reply_type: type[M], timeout: float) -> M:
    """Request/reply with typed messages; a micro-service error reply becomes ``RemoteError``.

    While NATS is unreachable this fails at once with ``NotConnectedError`` (a ``NoRespondersError``).
    Every request is timed (``llmgw_nats_request_duration_seconds{subject, outcome}``: subjects are
    constants); while tracing is on it is a CLIENT span whose context travels in the request's headers
    (``traceparent``), for the answering service to continue the trace.
    """
    if getattr(nc, "is_connected", True) is False:
        raise NotConnectedError
    if tracing.enabled:
        with tracing.span("llmgw.nats", f"send {subject}", tracing.CLIENT,
                          {"messaging.system": "nats", "messaging.destination.name": subject}):
            return await _request(nc, subject, msg, reply_type, timeout, tracing.inject())
    return await _request(nc, subject, msg, reply_type, timeout, None)


async def _request(nc: NATS, subject: str, msg: Message | FastMessage, reply_type: type[M], timeout: float,
                   headers: dict[str, str] | None) -> M:
    outcome = "error"
    t0 = time.perf_counter()
    try:
        try:
            resp = await nc.request(subject, msg.encode(), timeout=timeout, headers=headers)
        except (OutboundBufferLimitError, ConnectionClosedError):
            outcome = "no_responders"
            raise NotConnectedError from None
        except NatsTimeoutError:
            outcome = "timeout"
            raise
        except NoRespondersError:
            outcome = "no_responders"
            raise
        if resp.headers and resp.headers.get("Nats-Service-Error-Code"):
            outcome = "remote_error"
            raise RemoteError(int(resp.headers["Nats-Service-Error-Code"]), "service_error",
                              resp.headers.get("Nats-Service-Error", ""))
        outcome = "ok"
    finally:
        metrics.nats().observe(subject, outcome, time.perf_counter() - t0)
    return cast(M, reply_type.decode(resp.data))  # each decode returns its own class


async def ensure_usage_stream(js, max_age_s: float, max_bytes: int) -> None:
    """Create the usage stream (file storage) when missing; its max age and size follow the config (the one
    part of an existing stream a start changes: see ``jetstream``)."""
    cfg = StreamConfig(
        name=subjects.USAGE_STREAM,
        subjects=[subjects.USAGE_EVENT_WILDCARD],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        # publishers set Nats-Msg-Id = event id: a retried publish is stored once
        duplicate_window=120.0,
    )
    await ensure_stream(js, cfg, owned=("max_age", "max_bytes"))
