"""A config change reaches every running edge replica (and the router) without a restart, and drops no
request in flight."""

from __future__ import annotations

import asyncio
import os
import threading

import httpx
import pytest

from fakes import FakeProvider
from llmgw_common import subjects
from llmgw_common.nats_conn import connect_nats
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration


def _config(a: FakeProvider, b: FakeProvider, with_new: bool, bad: bool = False) -> str:
    extra = f"""
  - id: newp
    base_url: {b.url}
    models: [{{name: brand-new}}]
""" if with_new else ""
    return f"""
version: 1
providers:
  - id: oldp
    base_url: {a.url}
    models: [{{name: slowish}}]
{extra}
edge:
  max_body_bytes: {4096 if bad else 1048576}
usage:
  batch_wait_s: 0.1
"""


async def _announce(nats_url: str) -> None:
    nc = await connect_nats(nats_url, "test-config")
    await nc.publish(subjects.CONFIG_CHANGED, b"{}")
    await nc.flush()
    await nc.close()


def test_the_edge_applies_a_new_config_live(infra, tmp_path):
    with FakeProvider(models=["slowish"], delay_s=2.0) as a, FakeProvider(models=["brand-new"]) as b:
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path, _config(a, b, with_new=False), env, replicas={"edge": 2}) as stack:
            base = f"http://127.0.0.1:{stack.edge_port}"

            def ask(model: str) -> int:
                return httpx.post(base + "/v1/chat/completions", timeout=30,
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code

            assert ask("brand-new") == 404
            in_flight: list[int] = []
            slow = threading.Thread(target=lambda: in_flight.append(ask("slowish")))
            slow.start()
            wait_for(lambda: a.requests, timeout=10, interval=0.05)  # the slow request is upstream now

            stack.config_path.write_text(_config(a, b, with_new=True))
            asyncio.run(_announce(infra.nats_url))
            wait_for(lambda: ask("brand-new") == 200, timeout=10, interval=0.2)  # edge and router both reloaded
            assert b.requests[-1]["body"]["model"] == "brand-new"
            slow.join(30)
            assert in_flight == [200]  # the change dropped nothing in flight
            # both edge replicas serve it (a new connection each: the kernel picks the replica)
            served_by = set()
            for _ in range(20):
                r = httpx.post(base + "/v1/chat/completions", timeout=30,
                               json={"model": "brand-new", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
                served_by.add(r.headers["x-llmgw-edge"])
            assert served_by == {"edge-1", "edge-2"}

            # a broken file is refused by the edge, which keeps running with the config it has
            stack.config_path.write_text("version: 1\nproviders: [{id: 'BAD ID'}]\n")
            asyncio.run(_announce(infra.nats_url))
            assert ask("brand-new") == 200
            # edge limits from the config apply too
            stack.config_path.write_text(_config(a, b, with_new=True, bad=True))
            asyncio.run(_announce(infra.nats_url))
            wait_for(lambda: httpx.post(base + "/v1/chat/completions", timeout=30, json={
                "model": "brand-new", "messages": [{"role": "user", "content": "x" * 5000}]}).status_code == 413,
                timeout=10, interval=0.2)
