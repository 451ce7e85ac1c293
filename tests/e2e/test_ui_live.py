"""The web UI's live overview (``GET /api/live``, Server-Sent Events) and ``POST /api/compare``, through a
running stack: a request shows up in the stream within a UI's freshness bar, 50 open streams cost the
usage service and the router no more queries than one (counted on NATS), a closed stream leaves at
once, and a prompt goes to two targets side by side through the edge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import httpx
import pytest

from admin import admin_headers
from fakes import FakeProvider
from llmgw_common import subjects
from llmgw_common.admin_auth import ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV
from llmgw_common.nats_conn import connect_nats
from llmgw_ui_api.routes_live import QUEUE_SIZE, LiveClient
from stacks import running_stack

pytestmark = pytest.mark.integration

SSE_HEADERS = {"accept": "text/event-stream"}


class SSE:
    """One /api/live stream read in the background: every event as (time seen, name, data)."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        self.client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(30, read=60))
        self.events: list[tuple[float, str, dict]] = []
        self.status: int | None = None
        self.task: asyncio.Task | None = None
        self.opened = asyncio.Event()

    async def _read(self) -> None:
        async with self.client.stream("GET", "/api/live", headers=SSE_HEADERS) as resp:
            self.status = resp.status_code
            self.content_type = resp.headers.get("content-type", "")
            self.opened.set()
            name, data = "message", []
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if data:
                        self.events.append((time.monotonic(), name, json.loads("\n".join(data))))
                    name, data = "message", []

    async def __aenter__(self) -> SSE:
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), 30)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.client.aclose()

    def named(self, name: str) -> list[tuple[float, dict]]:
        return [(t, d) for t, n, d in self.events if n == name]

    async def wait_for(self, predicate, timeout: float = 20.0):
        """The first event (time, name, data) that satisfies ``predicate``, waiting for it (bounded)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(*event[1:]):
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event within {timeout}s; last: {self.events[-1:]}")
            await asyncio.sleep(0.05)


class QueryCounter:
    """Counts the requests on the usage and router query subjects (a plain subscription sees every
    request, whoever answers it)."""

    SUBJECTS = (subjects.USAGE_QUERY_CURRENT, subjects.ROUTER_STATE)

    def __init__(self, nats_url: str):
        self.nats_url = nats_url
        self.times: dict[str, list[float]] = {s: [] for s in self.SUBJECTS}

    async def __aenter__(self) -> QueryCounter:
        self.nc = await connect_nats(self.nats_url, "test-query-counter")
        for subject in self.SUBJECTS:
            async def seen(msg, subject=subject) -> None:
                self.times[subject].append(time.monotonic())

            await self.nc.subscribe(subject, cb=seen)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    def between(self, start: float, end: float) -> dict[str, int]:
        return {s: sum(start <= t < end for t in times) for s, times in self.times.items()}


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m", "other"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    """Its own NATS (the runner's): the query counts see this stack alone, and the key made at the end
    locks no other test's gateway."""
    config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    limits: {{requests_per_day: 10000}}
    models:
      - name: m
        price: {{input_per_mtok: 1, output_per_mtok: 2}}
        limits: {{requests_per_minute: 600, cost_per_day: 5}}
  - id: q
    base_url: {upstream.url}
    models: [{{name: other}}]
usage:
  batch_wait_s: 0.1
"""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV)}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path_factory.mktemp("live"), config, env) as s:
        yield s


def _ui(stack) -> str:
    return f"http://127.0.0.1:{stack.ui_port}"


def _chat(stack, model: str = "m", **extra) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hello live"}], **extra})


def _minute_requests(data: dict, provider: str = "p") -> int:
    for scope in data["scopes"]:
        if scope["scope"] == "provider" and scope["provider"] == provider:
            return scope["windows"]["minute"]["requests"]
    return 0


async def test_a_request_shows_up_in_the_stream_within_two_seconds(stack):
    async with SSE(_ui(stack), admin_headers(stack)) as sse:
        assert sse.status == 200 and sse.content_type.startswith("text/event-stream")
        _, _, first = await sse.wait_for(lambda name, data: name == "usage")
        _, _, health = await sse.wait_for(lambda name, data: name == "health")
        assert {p["id"] for p in health["providers"]} == {"p", "q"}
        assert {"breaker", "cooldown_s", "inflight", "latency_ms", "pinned"} <= set(health["providers"][0])
        assert first["limits"]["p"]["limits"]["requests_per_day"] == 10000
        assert first["limits"]["p"]["models"]["m"]["requests_per_minute"] == 600
        assert first["limits"]["p"]["models"]["m"]["cost_per_day"] == "5"
        before = _minute_requests(first)

        resp = await asyncio.to_thread(_chat, stack)
        sent = time.monotonic()
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        seen_at, _, data = await sse.wait_for(
            lambda name, data: name == "usage" and any(r["request_id"] == request_id for r in data["recent"]))
        row = next(r for r in data["recent"] if r["request_id"] == request_id)
        assert row["provider"] == "p" and row["model"] == "m" and row["status"] == 200
        assert row["tokens_in"] > 0 and row["tokens_out"] > 0 and float(row["cost_usd"]) > 0
        assert {"id", "ts", "latency_ms", "key_id"} <= set(row)
        counted_at, _, _ = await sse.wait_for(lambda name, data: name == "usage" and _minute_requests(data) > before)
        # a UI freshness bar, loosely: the event arrives at once, the windows after the usage service's batch
        assert seen_at - sent <= 2.0, seen_at - sent
        assert counted_at - sent <= 2.5, counted_at - sent
        print(f"in the stream after {seen_at - sent:.2f}s, counted in the windows after {counted_at - sent:.2f}s")


async def test_fifty_streams_cost_no_more_queries_than_one_and_leave_at_once(stack):
    headers = admin_headers(stack)
    async with QueryCounter(stack.nats.url) as counter:
        window = 6.0
        async with SSE(_ui(stack), headers) as one:
            await one.wait_for(lambda name, data: name == "usage")
            await asyncio.sleep(1.0)
            start = time.monotonic()
            await asyncio.sleep(window)
            single = counter.between(start, time.monotonic())

            streams = [SSE(_ui(stack), headers) for _ in range(49)]
            await asyncio.gather(*(s.__aenter__() for s in streams))
            try:
                await asyncio.gather(*(s.wait_for(lambda name, data: name == "usage" and data["clients"] == 50)
                                       for s in streams))
                start = time.monotonic()
                await asyncio.sleep(window)
                fifty = counter.between(start, time.monotonic())
                assert all(s.named("usage") and s.status == 200 for s in streams)
            finally:
                await asyncio.gather(*(s.close() for s in streams))
            print(f"queries in {window:.0f}s: one stream {single}, fifty streams {fifty}")
            # about one window query a second and one router query every two, however many watch
            assert 3 <= single[subjects.USAGE_QUERY_CURRENT] <= window + 1
            assert 1 <= single[subjects.ROUTER_STATE] <= window / 2 + 1
            for subject in QueryCounter.SUBJECTS:
                assert fifty[subject] <= single[subject] + 1, (subject, single, fifty)

            # the 49 closed streams left at once: the one still open is alone again within a tick or two
            closed = time.monotonic()
            at, _, _ = await one.wait_for(lambda name, data: name == "usage" and data["clients"] == 1, timeout=5)
            assert at - closed <= 2.0
        # the last stream closed: the hub unsubscribes and stops querying
        await asyncio.sleep(0.5)
        quiet = time.monotonic()
        await asyncio.sleep(2.5)
        assert counter.between(quiet, time.monotonic()) == {s: 0 for s in QueryCounter.SUBJECTS}


async def test_a_plain_get_is_one_snapshot_and_viewers_may_watch(stack):
    async with httpx.AsyncClient(base_url=_ui(stack), timeout=30) as ui:
        resp = await ui.get("/api/live", headers=admin_headers(stack))
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert set(body) == {"usage", "health"} and body["usage"]["limits"]["q"]["models"]["other"] == {
            k: None for k in body["usage"]["limits"]["q"]["limits"]}
        assert (await ui.get("/api/live", headers=SSE_HEADERS)).status_code == 401
    async with SSE(_ui(stack), admin_headers(stack, "readonly")) as viewer:
        await viewer.wait_for(lambda name, data: name == "usage")


def test_a_slow_client_loses_its_oldest_snapshots_never_blocks():
    client = LiveClient(None)
    for n in range(QUEUE_SIZE + 5):
        client.offer(b"%d" % n)  # never waits, however far behind the client is
    assert client.queue.qsize() == QUEUE_SIZE and client.dropped == 5
    assert client.queue.get_nowait() == b"5"


# ---- compare ----------------------------------------------------------------------------------------

def test_compare_two_targets_side_by_side(stack, upstream):
    with httpx.Client(base_url=_ui(stack), headers=admin_headers(stack), timeout=60) as ui:
        resp = ui.post("/api/compare", json={"prompt": "which is better?", "targets": ["p/m", "q/other"],
                                             "max_tokens": 64})
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert [r["target"] for r in results] == ["p/m", "q/other"]
        for r in results:
            assert r["status"] == 200 and r["error"] is None, r
            assert "which is better?" in r["text"]  # the demo provider echoes
            assert r["tokens_in"] > 0 and r["tokens_out"] > 0 and r["latency_ms"] > 0 and r["request_id"]
        assert {r["provider"] for r in results} == {"p", "q"}
        assert float(results[0]["cost_usd"]) > 0 and "price" in results[0]["cost_note"]  # the config's price
        sent = [r["body"]["model"] for r in upstream.requests[-2:]]
        assert sorted(sent) == ["m", "other"]  # through the edge, routed to each provider

        # an unknown target is answered in its row; the others still run
        resp = ui.post("/api/compare", json={"prompt": "x", "targets": ["p/m", "nope/none"]})
        rows = {r["target"]: r for r in resp.json()["results"]}
        assert rows["p/m"]["status"] == 200 and rows["nope/none"]["status"] == 404 and rows["nope/none"]["error"]

        for bad in ({"prompt": "x", "targets": []}, {"prompt": "x", "targets": ["a/b"] * 2},
                    {"prompt": "x", "targets": [f"p/m{i}" for i in range(7)]}, {"prompt": "", "targets": ["p/m"]},
                    {"prompt": "é" * 17000, "targets": ["p/m"]}, {"prompt": "x", "targets": ["m"]},
                    {"prompt": "x", "targets": ["p/m"], "max_tokens": 4097}, {"prompt": "x", "targets": ["p/m"],
                                                                            "stream": True},
                    # it would go into a header: a non-ASCII or multi-line key is the caller's mistake
                    {"prompt": "x", "targets": ["p/m"], "api_key": "llmgw-clé"},
                    {"prompt": "x", "targets": ["p/m"], "api_key": "llmgw-\u2603"},
                    {"prompt": "x", "targets": ["p/m"], "api_key": "a\r\nx-evil: 1"}):
            resp = ui.post("/api/compare", json=bad)
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_request", (bad, resp.text)
    resp = httpx.post(f"{_ui(stack)}/api/compare", headers=admin_headers(stack, "readonly"), timeout=30,
                      json={"prompt": "x", "targets": ["p/m"]})
    assert resp.status_code == 403  # it spends money


def test_compare_with_gateway_keys_enforced(stack):
    """Last in this module: once a key exists the gateway wants one on every request."""
    with httpx.Client(base_url=_ui(stack), headers=admin_headers(stack), timeout=60) as ui:
        secret = ui.post("/api/keys", json={"name": "compare"}).raise_for_status().json()["secret"]
        body = {"prompt": "keyed", "targets": ["p/m"]}
        row = ui.post("/api/compare", json=body).json()["results"][0]
        assert row["status"] == 401 and "api_key" in row["error"]
        row = ui.post("/api/compare", json={**body, "api_key": secret}).json()["results"][0]
        assert row["status"] == 200 and "keyed" in row["text"]
        assert secret not in ui.post("/api/compare", json={**body, "api_key": secret}).text
