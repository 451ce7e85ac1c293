"""Redis connection helper (redis-py asyncio; works with Valkey too)."""

from __future__ import annotations

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_CONNECTIONS = 64

# Reconnection (docs/reliability.md). A command that meets a dropped connection (Redis restarted: every
# pooled connection is dead) or a Redis still loading its AOF (BusyLoadingError is a ConnectionError) is
# retried on a fresh connection: 3 retries, 40, 80, 80 ms apart. The whole budget (~0.2 s) is kept far
# below a Redis restart (the runner waits at least 0.5 s) and far below the edge's routing timeout: while
# Redis is down a command fails fast, so the router answers 503 at once instead of letting the edge time
# out, and a script whose reply was lost with a dying server is never run a second time by a retry.
# Timeouts are not retried: the command may have run (the router's admission script is not idempotent).
RETRIES = 3
RETRY_BACKOFF = ExponentialBackoff(cap=0.08, base=0.02)
SOCKET_TIMEOUT_S = 5  # a Redis that stopped answering (no RST) fails a command after 5 s, never hangs it
HEALTH_CHECK_INTERVAL_S = 5  # a connection idle this long is PINGed before use (a restart in between is seen)


class _PackedConnection(Connection):
    """Commands packed into RESP by hiredis (C) instead of redis-py's asyncio packer (Python, ~1 µs an
    argument): the router's admission script has dozens of arguments per request."""

    def pack_command(self, *args):
        first = args[0]
        # a command name with its sub-command in one argument ("SCRIPT LOAD") goes as separate arguments
        if isinstance(first, str) and " " in first:
            args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


def connect_redis(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """One pooled client per process. The pool blocks (up to 10 s) when every connection is busy
    instead of failing: a burst of concurrent decisions waits its turn rather than erroring."""
    # redis:// only: for rediss:// and unix:// the URL picks redis-py's own (TLS, socket) connection class
    packed = {"connection_class": _PackedConnection} if url.lower().startswith("redis://") else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, decode_responses=True, **packed,
        health_check_interval=HEALTH_CHECK_INTERVAL_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S, socket_keepalive=True,
        retry=Retry(RETRY_BACKOFF, RETRIES, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError])
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
