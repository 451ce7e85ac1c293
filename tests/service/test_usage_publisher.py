"""The edge's usage publisher loses nothing when NATS goes away and comes back."""

from __future__ import annotations


import asyncio

import pytest

from llmgw_cli.infra import NatsServer
from llmgw_common import subjects
from llmgw_common.messages import UsageEvent
from llmgw_common.nats_conn import connect_nats, ensure_usage_stream
from llmgw_edge.usage_publisher import UsagePublisher
from stacks import wait_until

pytestmark = pytest.mark.integration


def _event(i: int) -> UsageEvent:
    return UsageEvent(request_id=f"r{i}", provider="p", model="m", status=200, tokens_in=i)


async def _stream_count(js) -> int:
    return (await js.stream_info(subjects.USAGE_STREAM)).state.messages


async def test_events_survive_a_nats_restart(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    nc = await connect_nats(server.url, "test-edge")
    try:
        js = nc.jetstream()
        await ensure_usage_stream(js, 3600, 10**8)
        publisher = UsagePublisher(js, tmp_path / "spill", "edge-a")
        await publisher.start()
        for i in range(5):
            publisher.submit(_event(i))
        await wait_until(lambda: _count_is(js, 5))

        server.kill()  # NATS is gone: submitting must neither block nor fail
        for i in range(5, 15):
            publisher.submit(_event(i))
        # the worker has them, trying while NATS is away
        await wait_until(lambda: publisher._queue.empty() and publisher._holding)
        server.start()  # same port, same JetStream store
        await wait_until(lambda: _count_is(js, 15), timeout=30)
        await publisher.stop()
    finally:
        await nc.close()
        server.stop()


async def _count_is(js, n: int) -> bool:
    try:
        return await _stream_count(js) == n
    except Exception:
        return False


async def test_unsent_events_are_spilled_at_shutdown_and_sent_at_next_start(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    spill_dir = tmp_path / "spill"
    spill = spill_dir / "edge-a.ndjson"
    nc = await connect_nats(server.url, "test-edge")
    try:
        js = nc.jetstream()
        await ensure_usage_stream(js, 3600, 10**8)
        server.kill()
        publisher = UsagePublisher(js, spill_dir, "edge-a")
        await publisher.start()
        events = [_event(i) for i in range(3)]
        for e in events:
            publisher.submit(e)
        await publisher.stop(flush_timeout=0.5)
        assert len(spill.read_text().splitlines()) == 3

        server.start()
        again = UsagePublisher(js, spill_dir, "edge-b")  # another replica picks it up
        await again.start()
        await wait_until(lambda: _count_is(js, 3), timeout=30)
        await again.stop()
        assert not list(spill_dir.iterdir())
        # the ids were kept: JetStream stored each event once
        sub = await js.pull_subscribe(subjects.USAGE_EVENT_WILDCARD, durable=None)
        got = {UsageEvent.decode(m.data).id for m in await sub.fetch(3, timeout=5)}
        assert got == {e.id for e in events}
    finally:
        await nc.close()
        server.stop()


async def test_an_event_held_while_nats_is_away_survives_a_stop_during_the_retry_sleep(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    nc = await connect_nats(server.url, "test-edge")
    try:
        js = nc.jetstream()
        await ensure_usage_stream(js, 3600, 10**8)
        server.kill()
        publisher = UsagePublisher(js, tmp_path / "spill", "edge-a")
        await publisher.start()
        held = _event(1)
        publisher.submit(held)
        # the worker holds it (waiting for an ack that cannot come, or sleeping before the next try)
        await wait_until(lambda: publisher._holding == [held])
        await publisher.stop(flush_timeout=0.1)  # cancelled wherever it is
        lines = (tmp_path / "spill" / "edge-a.ndjson").read_text().splitlines()
        assert [UsageEvent.model_validate_json(x).id for x in lines] == [held.id]
    finally:
        await nc.close()
        server.stop()


async def test_spill_files_of_every_replica_are_claimed_once(tmp_path):
    import fcntl

    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    for name, i in (("edge-a", 1), ("edge-b", 2)):
        (spill_dir / f"{name}.ndjson").write_text(_event(i).model_dump_json() + "\n")
    # a claim whose holder died (no lock) is claimed again; a live one (locked) is left alone
    (spill_dir / ".claimed-dead").write_text(_event(3).model_dump_json() + "\n")
    live = spill_dir / ".claimed-live"
    live.write_text(_event(4).model_dump_json() + "\n")
    with live.open() as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)

        class NoJetStream:
            async def publish(self, *args, **kwargs):
                raise ConnectionError("away")

        first = UsagePublisher(NoJetStream(), spill_dir, "edge-c")
        second = UsagePublisher(NoJetStream(), spill_dir, "edge-d")
        got_first = {e.request_id for e in first._claim_spilled()}
        got_second = {e.request_id for e in second._claim_spilled()}
        assert got_first == {"r1", "r2", "r3"} and got_second == set()
        assert live.exists()


class _WatchedJetStream:
    """The real JetStream context, watched: which events were published, how many had been published when
    the first ack arrived, and the first ack of some events lost (stored, but the edge never hears it)."""

    def __init__(self, js, lose_first_ack: set[str]):
        self._js = js
        self.published: list[str] = []
        self.published_at_first_ack: int | None = None
        self._lose = set(lose_first_ack)

    async def publish_async(self, subject: str, payload: bytes, headers: dict[str, str]):
        ack = await self._js.publish_async(subject, payload, headers=headers)
        event_id = headers["Nats-Msg-Id"]
        self.published.append(event_id)
        ack.add_done_callback(self._first_ack)
        if event_id not in self._lose:
            return ack
        self._lose.discard(event_id)
        lost = asyncio.get_running_loop().create_future()
        ack.add_done_callback(lambda _: lost.set_exception(TimeoutError("ack lost")))
        return lost

    def _first_ack(self, _ack) -> None:
        if self.published_at_first_ack is None:
            self.published_at_first_ack = len(self.published)


async def test_events_of_one_loop_turn_go_out_together_each_with_its_own_id_and_a_lost_ack_is_sent_again(
        tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    nc = await connect_nats(server.url, "test-edge")
    try:
        js = nc.jetstream()
        await ensure_usage_stream(js, 3600, 10**8)
        events = [_event(i) for i in range(50)]
        watched = _WatchedJetStream(js, lose_first_ack={events[7].id, events[30].id})
        publisher = UsagePublisher(watched, tmp_path / "spill", "edge-a")
        await publisher.start()
        for e in events:  # one event-loop turn, as under load
            publisher.submit(e)
        await wait_until(lambda: publisher.published == 50)
        # one batch: every event was published before any ack came back (acks awaited together)
        assert watched.published_at_first_ack == 50
        # each with its own Nats-Msg-Id; the two whose ack was lost were sent again, alone, with the same id
        assert watched.published[:50] == [e.id for e in events]
        assert sorted(watched.published[50:]) == sorted([events[7].id, events[30].id])
        assert await _stream_count(js) == 50  # stored once each (JetStream's duplicate window)
        await publisher.stop()
    finally:
        await nc.close()
        server.stop()
