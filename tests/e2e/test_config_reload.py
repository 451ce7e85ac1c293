"""A config change pushed to the config bucket reaches every running edge and router replica without a
restart and without a file, and drops no request in flight."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest

from fakes import FakeProvider
from llmgw_common import subjects
from llmgw_common.nats_conn import connect_nats
from stacks import push_config, running_stack, wait_for

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


async def _revisions(nats_url: str) -> list[dict]:
    """Every process's answer on llmgw.config.revisions (a scatter-gather, 0.3 s to answer)."""
    nc = await connect_nats(nats_url, "test-config-revisions")
    answers: list[dict] = []
    try:
        inbox = nc.new_inbox()

        async def collect(msg) -> None:
            answers.append(json.loads(msg.data))

        sub = await nc.subscribe(inbox, cb=collect)
        await nc.publish(subjects.CONFIG_REVISIONS, b"", reply=inbox)
        await asyncio.sleep(0.3)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return answers


def test_the_edge_applies_a_new_config_live(infra, tmp_path):
    with FakeProvider(models=["slowish"], delay_s=2.0) as a, FakeProvider(models=["brand-new"]) as b:
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path, _config(a, b, with_new=False), env, replicas={"edge": 2, "router": 2}) as stack:
            base = f"http://127.0.0.1:{stack.edge_port}"

            def ask(model: str) -> int:
                return httpx.post(base + "/v1/chat/completions", timeout=30,
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code

            assert ask("brand-new") == 404
            in_flight: list[int] = []
            slow = threading.Thread(target=lambda: in_flight.append(ask("slowish")))
            slow.start()
            wait_for(lambda: a.requests, timeout=10, interval=0.05)  # the slow request is upstream now

            seed = stack.config_path.read_text()
            pushed_at = time.monotonic()
            revision = asyncio.run(push_config(infra.nats_url, _config(a, b, with_new=True)))  # no file involved
            assert stack.config_path.read_text() == seed
            wait_for(lambda: ask("brand-new") == 200, timeout=10, interval=0.05)  # an edge and a router applied it
            # every edge and router replica runs it: measured, bounded by the wait (not a timed assert)
            running = {}

            def all_applied() -> bool:
                answers = asyncio.run(_revisions(infra.nats_url))
                running.update({(x["service"], x["instance"]): x["revision"] for x in answers})
                return sorted(s for (s, _), r in running.items() if r >= revision and s in ("edge", "router")) == [
                    "edge", "edge", "router", "router"]

            wait_for(all_applied, timeout=10, interval=0.05)
            print(f"config revision {revision} reached 2 edges and 2 routers in "
                  f"{time.monotonic() - pushed_at:.2f}s (answers take up to 0.3 s)")
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

            # an invalid revision (written past the checks) is refused, every replica keeps the config it has
            broken = asyncio.run(push_config(infra.nats_url, "version: 1\nproviders: [{id: 'BAD ID'}]\n"))
            wait_for(lambda: {x["latest"] for x in asyncio.run(_revisions(infra.nats_url))} == {broken}, timeout=10)
            assert {x["revision"] for x in asyncio.run(_revisions(infra.nats_url))} == {revision}
            assert ask("brand-new") == 200
            # edge limits from the config apply too
            asyncio.run(push_config(infra.nats_url, _config(a, b, with_new=True, bad=True)))
            wait_for(lambda: httpx.post(base + "/v1/chat/completions", timeout=30, json={
                "model": "brand-new", "messages": [{"role": "user", "content": "x" * 5000}]}).status_code == 413,
                timeout=10, interval=0.2)
