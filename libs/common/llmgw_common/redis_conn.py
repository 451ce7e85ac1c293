"""Redis connection helper (redis-py asyncio; works with Valkey too): the one place that knows whether
``REDIS_URL`` names one Redis, a Sentinel set or a Redis Cluster (docs/scaling.md, "Redis").

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL forms).
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/<db>][?sentinel_password=...]
  [&wait_replicas=N]``: the primary the sentinels name for ``<service>``, followed through a failover.
  Credentials are the data nodes'; ``sentinel_password`` the sentinels' own, when they require one; each
  script waits for ``wait_replicas`` replicas (default 1) to hold its writes. redis-py has no URL for it.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster found from these nodes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from llmgw_common import redis_keys

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


SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_PORTS = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}


@dataclass(frozen=True)
class NodeSet:
    """What a ``redis+sentinel://`` or ``redis+cluster://`` URL names."""

    scheme: str
    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    service: str = ""  # sentinel: the monitored primary's name
    db: int = 0
    sentinel_password: str | None = None
    wait_replicas: int = 1  # sentinel: replicas that must hold a script's writes before its answer counts


def parse_node_set(url: str) -> NodeSet:
    """A sentinel or cluster URL taken apart; ValueError saying what is wrong (never echoing a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}:// URL")
    parts = urlsplit("//" + rest)
    credentials, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    nodes = []
    for node in (n.strip() for n in hosts.split(",")):
        bare = ":" not in node or node.endswith("]")  # no port (an IPv6 address comes in brackets)
        host, colon, port = (node, "", "") if bare else node.rpartition(":")
        if not host:
            raise ValueError(f"{scheme}://: a node without a host in {hosts!r}")
        if colon and not port.isdigit():
            raise ValueError(f"{scheme}://: the port of {host} is not a number")
        nodes.append((host.strip("[]"), int(port) if colon else DEFAULT_PORTS[scheme]))
    path = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)
    if scheme == CLUSTER_SCHEME:
        if path:
            raise ValueError(f"{CLUSTER_SCHEME}:// takes no path: a Redis Cluster has only database 0")
        return NodeSet(scheme, nodes, username, password)
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{SENTINEL_SCHEME}:// needs the service name, then optionally the database number: "
                         f"{SENTINEL_SCHEME}://host:26379,host2:26379/mymaster/0")
    wait_replicas = query.get("wait_replicas", ["1"])[0]
    if not wait_replicas.isdigit():
        raise ValueError(f"{SENTINEL_SCHEME}://: wait_replicas must be a whole number (0: do not wait)")
    return NodeSet(scheme, nodes, username, password, service=path[0], db=int(path[1]) if len(path) == 2 else 0,
                   sentinel_password=query.get("sentinel_password", [None])[0], wait_replicas=int(wait_replicas))


def _connection_options() -> dict:
    return dict(decode_responses=True, health_check_interval=HEALTH_CHECK_INTERVAL_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, socket_keepalive=True,
                retry=Retry(RETRY_BACKOFF, RETRIES, supported_errors=(RedisConnectionError,)),
                retry_on_error=[RedisConnectionError])


def connect_redis(url: str, max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """One pooled client per process. The pool blocks (up to 10 s) when every connection is busy
    instead of failing: a burst of concurrent decisions waits its turn rather than erroring."""
    scheme = url.partition("://")[0].lower()
    if scheme == SENTINEL_SCHEME:
        return _connect_sentinel(parse_node_set(url), max_connections)
    if scheme == CLUSTER_SCHEME:
        return _connect_cluster(parse_node_set(url), max_connections)  # type: ignore[return-value]
    # redis:// only: for rediss:// and unix:// the URL picks redis-py's own (TLS, socket) connection class
    packed = {"connection_class": _PackedConnection} if scheme == "redis" else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, **packed, **_connection_options())
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


# ---- Sentinel -------------------------------------------------------------------------------------------

class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The sentinels' primary, with the blocking pool's waiting turn (redis-py's sentinel pool fails when
    every connection is busy). A connection that meets a dead primary asks the sentinels again: the
    retries above fail fast while they elect a new one, then connect to it."""


REPLICA_ACK_TIMEOUT_MS = 500  # a script's writes not on a replica by then: its answer is not used
ALONE_RECHECK_S = 5.0  # a primary found without replicas is asked again after this long


class NotReplicated(RedisConnectionError):
    """A script ran on the primary, but no replica acknowledged its writes in time: a failover could lose
    them, so its answer is not used (the caller fails as when Redis is away: the router answers 503)."""


class _ReplicatedScript(AsyncScript):
    """Replication is asynchronous: a primary killed right after answering may not have passed the writes
    on, and the promoted replica would then admit past a limit. So a script called on its own is followed,
    on its connection (one pipeline, one round trip), by WAIT for ``replicas`` replicas; its answer counts
    only when they hold its writes. A reservation made but not acknowledged stays counted and is never used:
    under the limit, never over. Pipelined calls (outcomes, give-ups: releases only) do not wait.

    A primary with no replica connected (the promoted one, until the old primary comes back as its
    replica) has nobody to wait for: nothing fresher can be promoted. Its scripts then run without WAIT,
    and whether a replica came back is asked again every ``ALONE_RECHECK_S``."""

    def __init__(self, registered_client, script, replicas: int):
        super().__init__(registered_client, script)
        self.replicas = replicas
        self._alone_until = 0.0  # monotonic

    async def __call__(self, keys=None, args=None, client=None):
        if client is not None or not self.replicas or time.monotonic() < self._alone_until:
            return await super().__call__(keys, args, client)
        keys, args = list(keys or []), list(args or [])
        for loaded_now in (False, True):
            async with self.registered_client.pipeline(transaction=False) as pipe:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
                pipe.wait(self.replicas, REPLICA_ACK_TIMEOUT_MS)
                try:
                    result, acked = await pipe.execute()
                except NoScriptError:
                    if loaded_now:
                        raise
                    self.sha = await self.registered_client.script_load(self.script)
                    continue
            if int(acked) >= self.replicas:
                return result
            connected = int((await self.registered_client.info("replication")).get("connected_slaves", 0))
            if connected == 0:
                self._alone_until = time.monotonic() + ALONE_RECHECK_S
                return result
            if int(acked) >= min(self.replicas, connected):
                return result
            raise NotReplicated(f"{acked} of {connected} replicas acknowledged within {REPLICA_ACK_TIMEOUT_MS} ms")
        raise AssertionError("unreachable")


class _SentinelRedis(aioredis.Redis):
    wait_replicas = 1

    def register_script(self, script):
        return _ReplicatedScript(self, script, self.wait_replicas)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)
        for sentinel in pool.sentinel_manager.sentinels:  # the clients asking the sentinels
            await sentinel.aclose()


def _connect_sentinel(target: NodeSet, max_connections: int) -> aioredis.Redis:
    sentinel_options = dict(socket_connect_timeout=SOCKET_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                            password=target.sentinel_password)
    sentinel = Sentinel(target.nodes, sentinel_kwargs=sentinel_options)
    client = sentinel.master_for(target.service, redis_class=_SentinelRedis,
                                 connection_pool_class=_BlockingSentinelPool, max_connections=max_connections,
                                 timeout=10, db=target.db, username=target.username, password=target.password,
                                 **_connection_options())
    client.wait_replicas = target.wait_replicas
    return client


# ---- Redis Cluster --------------------------------------------------------------------------------------

class _StateSlotScript(AsyncScript):
    """A script that names no key runs in the slot of the gateway's state (redis_keys.STATE): every key a
    gateway script touches carries that hash tag, so the script finds them all on that shard. Otherwise
    redis-py would send it to any primary."""

    async def __call__(self, keys=None, args=None, client=None):
        keys = list(keys or []) or [redis_keys.STATE]
        if isinstance(client, ClusterPipeline):
            # a cluster pipeline cannot load a script a shard lacks (a promoted replica has none): the text
            # goes along, as EVAL, instead of its digest
            return client.eval(cast(str, self.script), len(keys), *keys, *(args or []))
        return await super().__call__(keys, args, client)


class _BoundedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True):
        async with cast(_GatewayCluster, self.cluster_client).in_flight:
            return await super().execute(raise_on_error, allow_redirections)


class _GatewayCluster(RedisCluster):
    """RedisCluster with the gateway's scripts routed to their slot, and with the waiting turn of the
    blocking pool: redis-py's cluster client fails a command when a node's connections are all busy, so at
    most ``max_connections`` commands (or pipelines) are in flight, and a burst waits for its turn."""

    def __init__(self, *, max_connections: int, **kwargs):
        super().__init__(max_connections=max_connections, **kwargs)
        self.in_flight = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args, **kwargs):
        async with self.in_flight:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction=None, shard_hint=None):
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py's own error
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's own ClusterPipeline

    def register_script(self, script):
        return _StateSlotScript(self, script)


def _connect_cluster(target: NodeSet, max_connections: int) -> RedisCluster:
    return _GatewayCluster(startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
                           max_connections=max_connections, username=target.username, password=target.password,
                           **_connection_options())
