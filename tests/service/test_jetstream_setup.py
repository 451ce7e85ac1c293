"""Streams and buckets on a real NATS: created when missing, and a restart (the same ``ensure_*`` again) leaves an
existing one as it is, apart from what it owns, with a warning for each difference. Replicas on a cluster:
tests/cluster/test_nats_cluster.py."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from llmgw_common.config import ConfigError
from llmgw_common.jetstream import REPLICAS_ENV, WATCH_HEARTBEAT_S, ensure_bucket, ensure_stream, replicas_setting
from llmgw_common.nats_conn import connect_nats, server_urls

pytestmark = pytest.mark.integration

STREAM = "TEST_JS_SETUP"
BUCKET = "TEST_JS_SETUP_KV"


def _stream(max_age: float = 3600.0) -> StreamConfig:
    return StreamConfig(name=STREAM, subjects=["test.jssetup.>"], storage=StorageType.FILE, max_age=max_age,
                        max_bytes=10_000_000, duplicate_window=120.0)


@pytest.fixture
async def js(infra, monkeypatch):
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    nc = await connect_nats(infra.nats_url, "test-jetstream-setup")
    js = nc.jetstream()
    await _forget(js)
    yield js
    await _forget(js)
    await nc.close()


async def _forget(js) -> None:
    from nats.js.errors import NotFoundError

    for delete in (js.delete_stream(STREAM), js.delete_key_value(BUCKET)):
        try:
            await delete
        except NotFoundError:
            pass


async def test_a_restart_keeps_a_streams_hand_made_settings_and_warns(js, caplog):
    await ensure_stream(js, _stream(), owned=("max_age", "max_bytes"))
    created = (await js.stream_info(STREAM)).config
    assert (created.num_replicas, created.max_age, created.duplicate_window) == (1, 3600.0, 120.0)
    # an operator's edits (nats stream edit): one setting the gateway never sets, one it creates differently
    await js.update_stream(replace(created, max_msgs=1000, duplicate_window=60.0))

    with caplog.at_level(logging.WARNING, logger="llmgw.jetstream"):
        await ensure_stream(js, _stream(), owned=("max_age", "max_bytes"))  # what a restart does
    kept = (await js.stream_info(STREAM)).config
    assert (kept.max_msgs, kept.duplicate_window, kept.num_replicas) == (1000, 60.0, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"stream {STREAM}: duplicate_window is 60.0 where this release creates 120.0; left as it is"]

    # what the caller owns (the usage stream's limits: the config's) follows it; the edits stay
    await ensure_stream(js, _stream(max_age=7200.0), owned=("max_age", "max_bytes"))
    updated = (await js.stream_info(STREAM)).config
    assert (updated.max_age, updated.max_msgs, updated.duplicate_window) == (7200.0, 1000, 60.0)


async def test_a_bucket_is_created_once_and_left_as_it_is(js, caplog):
    wanted = KeyValueConfig(bucket=BUCKET, history=5, description="test")
    kv = await ensure_bucket(js, wanted)
    await kv.put("k", b"v1")
    info = (await js.stream_info(f"KV_{BUCKET}")).config
    assert (info.max_msgs_per_subject, info.num_replicas) == (5, 1)
    await js.update_stream(replace(info, max_bytes=1_000_000))  # an operator's limit

    with caplog.at_level(logging.WARNING, logger="llmgw.jetstream"):
        kv = await ensure_bucket(js, replace(wanted, history=10))  # a release that would keep more
    assert (await kv.get("k")).value == b"v1"
    kept = (await js.stream_info(f"KV_{BUCKET}")).config
    assert (kept.max_msgs_per_subject, kept.max_bytes) == (5, 1_000_000)
    assert [r.getMessage() for r in caplog.records] == [
        f"stream KV_{BUCKET}: max_msgs_per_subject is 5 where this release creates 10; left as it is"]

    # its watches ask for a heartbeat every second: on a cluster, a watch whose node died is made again fast
    watcher = await kv.watchall()
    assert [c.config.idle_heartbeat for c in await js.consumers_info(f"KV_{BUCKET}")] == [WATCH_HEARTBEAT_S]
    await watcher.stop()


async def test_the_replicas_setting_changes_only_the_replicas(js, monkeypatch, caplog):
    await ensure_stream(js, _stream())
    monkeypatch.setenv(REPLICAS_ENV, "1")  # set and equal: nothing to do (3 needs a cluster)
    with caplog.at_level(logging.INFO, logger="llmgw.jetstream"):
        await ensure_stream(js, _stream())
    assert caplog.records == []
    assert (await js.stream_info(STREAM)).config.num_replicas == 1


@pytest.mark.parametrize("raw", ["three", "0", "6", "-1", "2.5"])
def test_a_bad_replicas_setting_names_the_variable(raw):
    with pytest.raises(ConfigError) as err:
        replicas_setting({REPLICAS_ENV: raw})
    assert err.value.problems == [(REPLICAS_ENV, f"a number of replicas from 1 to 5, not {raw!r}")]
    assert replicas_setting({}) is None and replicas_setting({REPLICAS_ENV: " 3 "}) == 3


async def test_nats_url_names_every_node_of_a_cluster(infra):
    from llmgw_cli.infra import free_port

    assert server_urls("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    # the first node down: a service connects to the next one
    nc = await connect_nats(f"nats://127.0.0.1:{free_port()},{infra.nats_url}", "test-two-urls")
    try:
        assert nc.is_connected
    finally:
        await nc.close()
