"""NATS / JetStream connection helpers shared by every service."""

from __future__ import annotations

import logging
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from . import subjects
from .messages import Message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


async def connect_nats(url: str, name: str) -> NATS:
    """Connect with endless reconnects: a NATS restart must not kill a service."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=[url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


class RemoteError(Exception):
    """A service answered with an ErrorReply."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


async def request(nc: NATS, subject: str, msg: Message, reply_type: type[M], timeout: float) -> M:
    """Request/reply with typed messages; a micro-service error reply becomes ``RemoteError``."""
    resp = await nc.request(subject, msg.encode(), timeout=timeout)
    if resp.headers and resp.headers.get("Nats-Service-Error-Code"):
        raise RemoteError(int(resp.headers["Nats-Service-Error-Code"]), "service_error",
                          resp.headers.get("Nats-Service-Error", ""))
    return reply_type.decode(resp.data)


async def ensure_usage_stream(js, max_age_s: float, max_bytes: int) -> None:
    """Create or update the usage stream (file storage, limits from config)."""
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
    try:
        await js.stream_info(subjects.USAGE_STREAM)
        await js.update_stream(cfg)
    except NotFoundError:
        await js.add_stream(cfg)
