"""Redis connection helper (redis-py asyncio; works with Valkey too)."""

from __future__ import annotations

import redis.asyncio as aioredis

MAX_CONNECTIONS = 64


def connect_redis(url: str) -> aioredis.Redis:
    """One pooled client per process. The pool blocks (up to 10 s) when every connection is busy
    instead of failing: a burst of concurrent decisions waits its turn rather than erroring."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=10, decode_responses=True, health_check_interval=30,
        socket_connect_timeout=5, retry_on_timeout=True)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
