"""Poison messages on the usage stream: refused, dead-lettered with their reason and original bytes,
terminated (never blocking the stream, never retried forever), listed and counted by the admin API,
and never brought back by ``llmgw replay``. Real nats-server, Redis and chDB, as test_usage_service."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from llmgw_common import subjects
from llmgw_common.messages import Attempt, UsageDeadLetters, UsageDeadLettersQuery
from llmgw_common.nats_conn import request
from llmgw_usage import deadletter, domain
from llmgw_usage.ingest import DEAD_LETTER_DELIVERIES, BatchProcessor
from llmgw_usage.projection import ClickHouseProjection
from llmgw_usage.store import ClickHouseStore
from llmgw_usage.windows_writer import WindowWriter
from test_usage_pipeline import _replay, _requests, _ui
from test_usage_service import (  # noqa: F401 - env is a fixture
    RecordingMsg,
    _event,
    _history,
    _publish,
    _uniq,
    _wait_caught_up,
    env,
    running_usage,
)

pytestmark = pytest.mark.integration


async def _purge_dead(js) -> None:
    await deadletter.ensure_stream(js)
    await js.purge_stream(subjects.USAGE_DLQ_STREAM)


async def _dead(nc, **kw) -> UsageDeadLetters:
    return await request(nc, subjects.USAGE_QUERY_DEAD, UsageDeadLettersQuery(**kw), UsageDeadLetters, timeout=30)


def _poison(provider: str) -> dict[str, bytes]:
    """Malformed messages, each with the reason it must be refused for."""
    def as_json(**change) -> bytes:
        return json.dumps({**json.loads(_event(provider, "m").encode()), **change}).encode()

    huge = _event(provider, "m", request_body="x" * (900 * 1024)).encode()  # a valid event, but 900 kB
    return {
        "out_of_range": as_json(status=10**30),
        "too_large": huge,
        "invalid": b"{not json at all",
        "too_long": as_json(model="m" * 1000),
        "no_key": as_json(id=""),
    }


async def test_poison_events_are_dead_lettered_listed_and_never_replayed(env):
    provider = _uniq("dlq")
    good = [_event(provider, "m", tokens_in=i + 1, cost_usd=Decimal("0.001")) for i in range(3)]
    poison = _poison(provider)
    subject = subjects.usage_event_subject(provider)
    await _purge_dead(env.js)
    async with running_usage(env), _ui(env) as ui:
        await _publish(env.js, good[0])
        sent: list[tuple[str, int, int]] = []  # (reason, stream seq, size), in stream order
        for reason, data in poison.items():
            ack = await env.js.publish(subject, data, headers={"Nats-Msg-Id": _uniq("poison")})
            sent.append((reason, ack.seq, len(data)))
        for ev in good[1:]:
            await _publish(env.js, ev)
        await _wait_caught_up(env.js)

        # the good events are stored and counted, the poison ones are not, and nothing is redelivered
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert sum(r.requests for r in hist.rows) == 3
        info = await env.js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0

        # every refused message is a dead letter: its reason, the original bytes (or an excerpt), newest first
        listing = await _dead(env.nc)
        assert listing.total == len(poison) and listing.by_reason == {r: 1 for r in poison}
        assert [(r.reason, r.stream_seq, r.size) for r in listing.rows] == list(reversed(sent))
        assert [r.seq for r in listing.rows] == sorted((r.seq for r in listing.rows), reverse=True)
        by_reason = {r.reason: r for r in listing.rows}
        assert by_reason["too_large"].kept == deadletter.EXCERPT_BYTES < by_reason["too_large"].size
        assert by_reason["invalid"].excerpt == "{not json at all" and by_reason["invalid"].kept == 16
        assert "status" in by_reason["out_of_range"].detail and "outside 0..999" in by_reason["out_of_range"].detail
        assert by_reason["too_long"].subject == subject
        assert all(r.at.year >= 2025 for r in listing.rows)
        stored = await env.js.get_msg(subjects.USAGE_DLQ_STREAM, seq=by_reason["out_of_range"].seq)
        assert stored.data == poison["out_of_range"]  # the original bytes, for a human to look at

        # the admin API: paged newest first, counted, filtered by reason; /api/requests unharmed
        resp = await ui.get("/api/usage/dead-letters", params={"limit": 2})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert [r["reason"] for r in page["rows"]] == [s[0] for s in reversed(sent)][:2] and page["total"] == 5
        rest = (await ui.get("/api/usage/dead-letters", params={"cursor": page["next_cursor"]})).json()
        assert [r["reason"] for r in page["rows"] + rest["rows"]] == [s[0] for s in reversed(sent)]
        assert rest["next_cursor"] is None
        counted = (await ui.get("/api/usage/dead-letters", params={"count": 1})).json()
        assert counted["total"] == 5 and counted["rows"] == [] and counted["by_reason"]["too_large"] == 1
        only = (await ui.get("/api/usage/dead-letters", params={"reason": "invalid"})).json()
        assert [r["reason"] for r in only["rows"]] == ["invalid"]
        for params in ({"limit": 0}, {"cursor": "x"}, {"reason": "r" * 100}, {"colour": "red"}):
            bad = await ui.get("/api/usage/dead-letters", params=params)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request", params
        logged = await ui.get("/api/requests", params={"provider": provider})
        assert logged.status_code == 200 and len(logged.json()["rows"]) == 3

        # a replay reads the whole stream again and refuses the same messages: nothing new anywhere
        assert await _replay(env, "--target", "all") == 0
        hist = await _history(env.nc, provider=provider, bucket_s=86400)
        assert sum(r.requests for r in hist.rows) == 3
        assert len((await _requests(env.nc, provider=provider)).rows) == 3
        assert (await _dead(env.nc, count_only=True)).total == 5  # and no dead letter twice


class FailingDeadLetters:
    def __init__(self):
        self.tries = 0

    async def put(self, msg, refusal):
        self.tries += 1
        raise ConnectionError("JetStream away")


class DeliveredMsg(RecordingMsg):
    """A message with the JetStream metadata the processor reads (how often it was delivered)."""

    def __init__(self, data: bytes, delivered: int):
        super().__init__(data)

        class _Meta:
            num_delivered = delivered

            class sequence:
                stream = 7

        self.metadata = _Meta


async def test_a_dead_letter_that_cannot_be_stored_comes_back_then_is_terminated_anyway(env, tmp_path):
    """The dead-letter stream being away delays a refused message (nak) a few times, never forever."""
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        dead = FailingDeadLetters()
        processor = BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis), dead_letters=dead)
        early = DeliveredMsg(b"{broken", delivered=1)
        last = DeliveredMsg(b"{broken", delivered=DEAD_LETTER_DELIVERIES)
        result = await processor.process([early, last])
        assert (early.naks, early.terms) == (1, 0)  # comes back later
        assert (last.naks, last.terms) == (0, 1)  # given up on: terminated (and logged in full)
        assert (result.deferred, result.terminated, result.dead_lettered) == (1, 1, 0) and dead.tries == 2
    finally:
        await store.close()


async def test_dead_letters_stored_once_and_the_batch_goes_on(env, tmp_path):
    """Refused messages of a batch are dead-lettered (once, even when refused again after a lost term),
    the rest of the batch is stored and acked."""
    provider = _uniq("dlq")
    await _purge_dead(env.js)
    store = ClickHouseStore(env.infra.clickhouse_url, tmp_path / "ch")
    await store.open()
    try:
        processor = BatchProcessor(ClickHouseProjection(store, env.redis), WindowWriter(env.redis),
                                   dead_letters=deadletter.DeadLetters(env.js))
        good = _event(provider, "m", tokens_in=3, attempts=[Attempt(provider=provider, upstream_model="u",
                                                                    status=200, latency_ms=1)])
        bad = DeliveredMsg(json.dumps({**json.loads(good.encode()), "id": "other", "tokens_in": -1}).encode(), 1)
        msgs = [RecordingMsg(good.encode()), bad]
        result = await processor.process(msgs)
        assert (result.stored, result.terminated, result.dead_lettered) == (1, 1, 1)
        assert (msgs[0].acks, bad.terms) == (1, 1)
        again = DeliveredMsg(bad.data, 2)  # the term was lost: the same message comes back
        assert (await processor.process([again])).dead_lettered == 1
        info = await env.js.stream_info(subjects.USAGE_DLQ_STREAM)
        assert info.state.messages == 1  # Nats-Msg-Id: stored once
        listing = await deadletter.list_dead(env.js, UsageDeadLettersQuery())
        assert [(r.reason, r.stream_seq) for r in listing.rows] == [("out_of_range", 7)]
        assert "tokens_in -1" in listing.rows[0].detail
    finally:
        await store.close()


async def test_a_replayed_event_clickhouse_refuses_is_left_out():
    """Replay (through the usage service or directly) halves a refused insert down to the refused events
    and stores the rest, instead of failing the whole replay."""
    from llmgw_usage.projection import ProjectionResult, project_leaving_out_refused
    from llmgw_usage.store import InsertRejected

    rows = [domain.event_row(_event("p", "m", tokens_in=i)) for i in range(6)]
    poison = {rows[4].id}

    class Projection:
        def __init__(self):
            self.stored = []

        async def project(self, batch, dry_run=False):
            if any(r.id in poison for r in batch):
                raise InsertRejected("Cannot parse input")
            self.stored += [r.id for r in batch]
            return ProjectionResult(inserted=len(batch))

    projection = Projection()
    result = await project_leaving_out_refused(projection, rows)
    assert result.inserted == 5 and set(projection.stored) == {r.id for r in rows} - poison
