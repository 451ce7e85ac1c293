"""Redis topologies on loopback for tests/cluster: a Redis Cluster of 3 primaries, and a Sentinel set
(1 primary, 1 replica, 3 sentinels). Real redis-server processes on free ports, in the test's own dirs."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from pathlib import Path

import redis as sync_redis

from llmgw_cli.infra import RedisServer, port_is_free, redis_server_binary

SENTINEL_SERVICE = "llmgw"
DOWN_AFTER_MS = 1000  # a primary that stops answering this long is down for the sentinels (then: failover)


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except sync_redis.RedisError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, and exists."""
    for _ in range(1000):
        port = random.randint(20000, 55000)
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class _Server(RedisServer):
    def __init__(self, data_dir: Path, *extra: str, port: int | None = None):
        super().__init__(data_dir, port=port, log_file=data_dir.with_suffix(".log"))
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(host=self.host, port=self.port, decode_responses=True, socket_timeout=5)


@contextlib.contextmanager
def redis_cluster(root: Path, primaries: int = 3):
    """A Redis Cluster of ``primaries`` primaries (no replicas), every slot covered; its
    ``redis+cluster://`` URL."""
    nodes = [_Server(root / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                     str(root / f"node{i}" / "nodes.conf"), "--cluster-node-timeout", "2000", port=_cluster_port()) for i in range(primaries)]
    try:
        for node in nodes:
            node.start()
        cli = str(Path(redis_server_binary()[0]).with_name("redis-cli"))
        subprocess.run([cli, "--cluster", "create", *(f"{n.host}:{n.port}" for n in nodes), "--cluster-replicas",
                        "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for node in nodes:
            with node.client() as c:
                _wait(lambda c=c: c.cluster("info")["cluster_state"] == "ok", 30, "cluster state ok")
        yield "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes)
    finally:
        for node in nodes:
            node.kill()


class _Sentinel(_Server):
    """redis-server in sentinel mode: its config file (which it rewrites) comes first, every option in it."""

    def command(self) -> list[str]:
        return [str(redis_server_binary()[0]), str(self.data_dir / "sentinel.conf"), "--sentinel"]


class SentinelSet:
    """1 primary, 1 replica, 3 sentinels (quorum 2) watching them as ``SENTINEL_SERVICE``."""

    def __init__(self, root: Path):
        self.primary = _Server(root / "primary", "--repl-diskless-sync-delay", "0")
        self.replica = _Server(root / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        self.sentinels = [_Sentinel(root / f"sentinel{i}") for i in range(3)]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"{s.host}:{s.port}" for s in self.sentinels) + \
            f"/{SENTINEL_SERVICE}/0"

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start()
        with self.replica.client() as c:  # its first full copy done: it holds what the primary writes
            _wait(lambda: c.info("replication")["master_link_status"] == "up", 30, "replica in sync")
        for s in self.sentinels:
            s.data_dir.mkdir(parents=True, exist_ok=True)
            (s.data_dir / "sentinel.conf").write_text(
                f"port {s.port}\nbind {s.host}\nprotected-mode no\ndir {s.data_dir}\n"
                f"sentinel monitor {SENTINEL_SERVICE} {self.primary.host} {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n")
            s.start()
        for s in self.sentinels:  # each knows the replica and the 2 other sentinels: it can fail over
            with s.client() as c:
                _wait(lambda c=c: c.sentinel_slaves(SENTINEL_SERVICE) and
                      len(c.sentinel_sentinels(SENTINEL_SERVICE)) == 2, 30, "sentinels ready")
        return self

    def primary_port(self) -> int:
        with self.sentinels[0].client() as c:
            return int(c.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)[1])

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.kill()
