"""Redis connection helper (redis-py asyncio; works with Valkey too)."""

from __future__ import annotations

import redis.asyncio as aioredis


def connect_redis(url: str) -> aioredis.Redis:
    # one pooled client per process; decode so Lua results come back as str/int
    return aioredis.from_url(url, decode_responses=True, health_check_interval=30,
                             socket_connect_timeout=5, retry_on_timeout=True)
