"""The gateway on a 3-node NATS cluster (JetStream, every stream and bucket at 3 replicas; ``make test-cluster``).

The stack (2 edges, 2 routers, usage, pricing, ui-api) is given every node in ``NATS_URL`` and
``LLMGW_NATS_REPLICAS=3``. It must:

- create (or raise to) 3 replicas every stream and bucket it uses, an older R1 bucket included;
- apply a config pushed to the bucket on 2 edges and 2 routers within about a second, no file involved;
- lose no usage event and count none twice when the node leading the usage stream is killed (-9) under
  paced load from the openai SDK, and keep serving keys and config on the two nodes left.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from admin import ADMIN_HEADERS, UI_TOKENS
from fakes import FakeProvider
from llmgw_common import config_bucket, subjects
from llmgw_common.messages import ConfigRevision
from llmgw_common.nats_conn import connect_nats
from nats_cluster import NatsCluster
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

REPLICATED = ("LLMGW_USAGE", "LLMGW_USAGE_DLQ", "KV_LLMGW_KEYS", "KV_LLMGW_CONFIG", "KV_LLMGW_SESSIONS")
AT_THREE = dict.fromkeys((*REPLICATED, subjects.USAGE_CONSUMER), 3)  # the streams, buckets and usage consumer
PROVIDER = "clu"
WORKERS = 4
PAUSE_S = 0.05  # between one worker's requests: paced load, a few hundred requests in all
BEFORE_KILL_S, AFTER_KILL_S = 3.0, 8.0


def _config(upstream: FakeProvider, models: tuple[str, ...] = ("m",)) -> str:
    return f"""
version: 1
providers:
  - id: {PROVIDER}
    base_url: {upstream.url}
    # a limit: every request is admitted by a router over NATS (a route without one is planned on the edge)
    limits: {{requests_per_minute: 100000}}
    models: [{", ".join(f"{{name: {m}}}" for m in models)}]
usage:
  batch_wait_s: 0.1
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats-cluster")) as nats_cluster:
        yield nats_cluster


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m", "m2", "m3"], delay_s=0.02) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(cluster, infra, upstream, tmp_path_factory):
    asyncio.run(_old_r1_keys_bucket(cluster.url))
    env = dict(os.environ, NATS_URL=cluster.url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url,
               LLMGW_NATS_REPLICAS="3", LLMGW_USAGE_ACK_WAIT_S="5", **UI_TOKENS)
    with running_stack(tmp_path_factory.mktemp("cluster-stack"), _config(upstream), env,
                       replicas={"edge": 2, "router": 2}) as running:
        yield running


async def _old_r1_keys_bucket(url: str) -> None:
    """The keys bucket as a release without the replicas setting created it: R1."""
    from nats.js.api import KeyValueConfig

    nc = await connect_nats(url, "test-old-release")
    try:
        await nc.jetstream().create_key_value(KeyValueConfig(bucket="LLMGW_KEYS", history=5, replicas=1))
    finally:
        await nc.close()


async def _replicas(url: str) -> dict[str, int]:
    """Replicas of every stream and bucket, and of the usage service's durable consumer (its leader + peers)."""
    nc = await connect_nats(url, "test-replicas")
    try:
        js = nc.jetstream()
        replicas = {name: (await js.stream_info(name)).config.num_replicas for name in REPLICATED}
        consumer = await js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        replicas[subjects.USAGE_CONSUMER] = 1 + len(consumer.cluster.replicas or [])
        return replicas
    finally:
        await nc.close()


async def _start_without_the_setting(url: str) -> None:
    """What each process creates at start, run by one without ``LLMGW_NATS_REPLICAS`` (a command, a service
    restarted with an older environment): it must find and keep the streams and buckets as they are."""
    from llmgw_common.admin_auth import SessionStore
    from llmgw_common.config import GatewayConfig
    from llmgw_common.keys import KeyStore
    from llmgw_common.nats_conn import ensure_usage_stream
    from llmgw_usage import deadletter

    nc = await connect_nats(url, "test-restart")
    try:
        js = nc.jetstream()
        usage = GatewayConfig().usage  # the stack's config leaves the stream limits at their defaults
        await ensure_usage_stream(js, max_age_s=usage.stream_max_age_days * 86400, max_bytes=usage.stream_max_bytes)
        await deadletter.ensure_stream(js)
        await KeyStore.open(js)
        await SessionStore.open(js)
        await config_bucket.open_bucket(js)
    finally:
        await nc.close()


def test_every_stream_and_bucket_runs_at_three_replicas(stack, cluster, monkeypatch):
    # the stack started with LLMGW_NATS_REPLICAS=3: created at 3, the older R1 keys bucket raised to 3
    assert asyncio.run(_replicas(cluster.url)) == AT_THREE
    monkeypatch.delenv("LLMGW_NATS_REPLICAS", raising=False)
    asyncio.run(_start_without_the_setting(cluster.url))
    assert asyncio.run(_replicas(cluster.url)) == AT_THREE


async def _until_applied(url: str, text: str, timeout: float = 10.0) -> tuple[int, float]:
    """Push ``text`` to the config bucket; poll ``llmgw.config.revisions`` until 2 edges and 2 routers run
    it. (revision, seconds from the write's acknowledgement to the round that saw all four)."""
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import APIError

    nc = await connect_nats(url, "test-config-push")
    try:
        tried_until = time.monotonic() + timeout
        while True:  # the bucket refuses writes (or does not answer) while it elects a new leader: retried
            try:
                kv = await config_bucket.open_bucket(nc.jetstream())
                revision = await kv.put(config_bucket.CONFIG_KEY, text.encode())
                break
            except (NatsTimeoutError, APIError):
                if time.monotonic() > tried_until:
                    raise
                await asyncio.sleep(0.2)
        pushed = time.monotonic()
        while time.monotonic() - pushed < timeout:
            answers: list[ConfigRevision] = []
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish(subjects.CONFIG_REVISIONS, b"", reply=inbox)
            try:  # every process answers at once: a round ends with the four edge and router answers
                while sum(a.service in ("edge", "router") for a in answers) < 4:
                    answers.append(ConfigRevision.decode((await sub.next_msg(timeout=0.5)).data))
            except Exception:  # noqa: BLE001 - fewer than four answered this round (one reconnecting)
                pass
            await sub.unsubscribe()
            running = sorted(a.service for a in answers if a.revision >= revision and a.service in ("edge", "router"))
            if running == ["edge", "edge", "router", "router"]:
                return revision, time.monotonic() - pushed
            await asyncio.sleep(0.01)
        raise AssertionError(f"revision {revision} not running on 2 edges and 2 routers in {timeout}s: {answers}")
    finally:
        await nc.close()


def _chat(stack, model: str, api_key: str = "unused") -> int:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=api_key, max_retries=0,
                           timeout=30)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


def test_a_pushed_config_reaches_two_edges_and_two_routers(stack, cluster, upstream):
    seed = stack.config_path.read_text()
    assert _chat(stack, "m2") == 404
    revision, took = asyncio.run(_until_applied(cluster.url, _config(upstream, ("m", "m2"))))
    print(f"\nconfig revision {revision} ran on 2 edges and 2 routers {took * 1000:.0f} ms after the write")
    assert took < 5.0  # measured above (about 0.1 s here); a generous bound on a loaded machine
    assert _chat(stack, "m2") == 200
    assert stack.config_path.read_text() == seed  # no file involved


@dataclass
class Load:
    """``WORKERS`` threads sending chat completions through the openai SDK, ``PAUSE_S`` apart, until stopped."""

    base_url: str
    api_key: str
    results: list[tuple[int | None, str | None]] = field(default_factory=list)  # (status, x-request-id)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WORKERS)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)

    def _run(self, worker: int) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=30)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": f"cluster {worker} {n}"}])
                raw.parse()
                self.results.append((raw.status_code, raw.headers.get("x-request-id")))
            except openai.APIStatusError as exc:
                self.results.append((exc.status_code, exc.response.headers.get("x-request-id")))
            except openai.APIConnectionError:
                self.results.append((None, None))
            self._stop.wait(PAUSE_S)


async def _stream_leader(url: str) -> str:
    nc = await connect_nats(url, "test-leader")
    try:
        return (await nc.jetstream().stream_info(subjects.USAGE_STREAM)).cluster.leader
    finally:
        await nc.close()


async def _stored_events(url: str) -> int | None:
    """Usage events of this test's provider in the stream (one per event id: the stream deduplicates); None
    while the stream does not answer (its new leader catching up)."""
    from nats.errors import TimeoutError as NatsTimeoutError

    nc = await connect_nats(url, "test-stream-count")
    try:
        info = await nc.jetstream().stream_info(subjects.USAGE_STREAM, subjects_filter=f"llmgw.usage.event.{PROVIDER}")
        return sum((info.state.subjects or {}).values())
    except NatsTimeoutError:
        return None
    finally:
        await nc.close()


def _clickhouse_rows(ui: str) -> list[dict]:
    rows, cursor = [], None
    while True:
        params = {"provider": PROVIDER, "limit": 1000} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(f"{ui}/api/requests", params=params, headers=ADMIN_HEADERS, timeout=10).raise_for_status()
        rows += page.json()["rows"]
        cursor = page.json().get("next_cursor")
        if not cursor:
            return rows


def _created_key(ui: str, name: str) -> str | None:
    r = httpx.post(f"{ui}/api/keys", json={"name": name}, headers=ADMIN_HEADERS, timeout=10)
    assert r.status_code in (201, 503), r.text
    return r.json()["secret"] if r.status_code == 201 else None


def _every_edge_accepts(stack, api_key: str, model: str = "m") -> bool:
    """A round of requests (a new connection each: the kernel picks the edge) all answered 200, by both edges."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=api_key, max_retries=0,
                           timeout=30)
    edges = set()
    for _ in range(12):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}], extra_headers={"connection": "close"})
        except openai.APIStatusError as exc:
            REFUSALS.append(f"{exc.response.headers.get('x-llmgw-edge')}: {exc.status_code} {exc.message}")
            return False
        edges.add(raw.headers["x-llmgw-edge"])
    return edges == {"edge-1", "edge-2"}


REFUSALS: list[str] = []  # what _every_edge_accepts saw refused (shown when a wait fails)


def test_killing_the_usage_streams_leader_under_load_loses_and_doubles_nothing(stack, cluster, upstream):
    ui = f"http://127.0.0.1:{stack.ui_port}"
    key = httpx.post(f"{ui}/api/keys", json={"name": "before-kill"}, headers=ADMIN_HEADERS,
                     timeout=10).raise_for_status().json()["secret"]
    wait_for(lambda: _every_edge_accepts(stack, key), timeout=10, interval=0.5)  # both edges follow the bucket

    load = Load(f"http://127.0.0.1:{stack.edge_port}/v1", key)
    time.sleep(BEFORE_KILL_S)
    leader = asyncio.run(_stream_leader(cluster.url))
    victim = next(n for n in cluster.nodes if f"llmgw-{n.port}" == leader)
    victim.kill()  # SIGKILL: no goodbye to the routes or the clients
    killed_at = time.monotonic()
    survivors = [n for n in cluster.nodes if n is not victim]
    time.sleep(1.0)

    # the keys and config buckets, on the two nodes left: a new key works, a config push lands
    # (a write while the bucket elects a new leader is refused with a clean 503: the admin retries)
    late_key = wait_for(lambda: _created_key(ui, "after-kill"), timeout=20, interval=0.2)
    keys_back_s = time.monotonic() - killed_at
    REFUSALS.clear()
    try:
        # polled gently: each refusal of the key counts as a failed key check from this address (20 a minute
        # and the address is blocked)
        wait_for(lambda: _every_edge_accepts(stack, late_key), timeout=15, interval=0.5)
    except AssertionError:
        raise AssertionError(f"the new key is refused: {REFUSALS[-5:]}") from None
    keys_everywhere_s = time.monotonic() - killed_at
    revision, took = asyncio.run(_until_applied(",".join(n.url for n in survivors),
                                                _config(upstream, ("m", "m2", "m3")), timeout=30))
    assert _chat(stack, "m3", late_key) == 200
    time.sleep(max(0.0, killed_at + AFTER_KILL_S - time.monotonic()))
    load.stop()

    statuses = Counter(status for status, _ in load.results)
    served = {rid for status, rid in load.results if status == 200}
    assert statuses[None] == 0, f"connections failed: {statuses}"
    assert not {s for s in statuses if s is not None and s >= 500} - {502, 503, 504}, statuses
    assert len(served) > 100, statuses

    survivors_url = ",".join(n.url for n in survivors)
    rows: list[dict] = []
    stored = 0

    def landed() -> bool:  # every answered request a row, and as many rows as events in the stream
        nonlocal stored
        rows[:] = _clickhouse_rows(ui)
        stored = asyncio.run(_stored_events(survivors_url))
        return served <= {r["request_id"] for r in rows} and len(rows) == stored

    wait_for(landed, timeout=60, interval=0.5)
    time.sleep(1.0)  # a double would land by now
    rows = _clickhouse_rows(ui)
    doubles = [rid for rid, n in Counter(r["request_id"] for r in rows).items() if n > 1]
    ok_ids = {r["request_id"] for r in rows if r["status"] < 400}
    print(f"\nkilled {leader} (the usage stream's leader) under load: {len(load.results)} requests "
          f"{dict(statuses)}; {len(rows)} events in ClickHouse, {stored} in the stream, {len(doubles)} "
          f"twice; a key created {keys_back_s:.1f} s after the kill, accepted by both edges at "
          f"{keys_everywhere_s:.1f} s; config revision {revision} on 2 edges "
          f"and 2 routers {took * 1000:.0f} ms after the write")
    assert doubles == []  # 0 double
    assert served <= ok_ids  # 0 lost: every answered request is a successful row
    assert len(rows) == stored  # the stream holds each event once, ClickHouse has them all
    assert asyncio.run(_replicas(survivors_url)) == AT_THREE
