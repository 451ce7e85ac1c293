"""A NATS cluster with JetStream on loopback for tests: three nats-server processes (the pinned package's
binary), routed to each other, each with its own ports and store directory."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from llmgw_cli.infra import NatsServer, free_port

CLUSTER_NAME = "llmgw-test"


class ClusterNode(NatsServer):
    """One member: the plain server's command plus its cluster listener and routes to every member."""

    def __init__(self, data_dir: Path, cluster_port: int, routes: list[str], **kwargs):
        super().__init__(data_dir, **kwargs)
        self.cluster_port = cluster_port
        self.routes = routes

    def command(self) -> list[str]:
        return super().command() + ["--cluster_name", CLUSTER_NAME,
                                    "--cluster", f"nats://{self.host}:{self.cluster_port}",
                                    "--routes", ",".join(self.routes)]

    def jsz(self) -> dict:
        with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}/jsz", timeout=2) as r:
            return json.loads(r.read())


class NatsCluster:
    """``size`` routed nodes; ``url`` names them all (comma-separated, as ``NATS_URL`` takes a cluster)."""

    def __init__(self, root: Path, size: int = 3):
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [ClusterNode(root / f"node{i}", port, routes, log_file=root / f"node{i}.log")
                      for i, port in enumerate(cluster_ports)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_meta_leader(self.nodes, timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def wait_meta_leader(nodes: list[ClusterNode], timeout: float = 30.0) -> str:
        """Until every given node sees the same JetStream meta leader with all its peers: streams can be
        placed on the cluster. The leader's name."""
        deadline = time.monotonic() + timeout
        seen: list = []
        while True:
            try:
                seen = [n.jsz().get("meta_cluster", {}) for n in nodes]
                leaders = {m.get("leader") for m in seen}
                peers_current = [sum(1 for r in m.get("replicas") or [] if r.get("current")) for m in seen
                                 if m.get("leader") and m.get("peer") and m.get("replicas") is not None]
                if len(leaders) == 1 and leaders != {None} and len(nodes) - 1 in peers_current:
                    return str(leaders.pop())
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no JetStream meta leader in {timeout}s: {seen}")
            time.sleep(0.2)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
