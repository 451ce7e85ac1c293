"""Wiring of the usage service: ``llmgw usage`` runs ``run()``; tests run ``serve()`` in-process."""

from __future__ import annotations

import asyncio
import gc
import logging

from pydantic import Field

from llmgw_common import health, service, subjects
from llmgw_common.config import ConfigError, GatewayConfig
from llmgw_common.messages import (KeyUsageQuery, UsageCurrentQuery, UsageDeadLettersQuery, UsageHistoryQuery,
                                   UsageReplayBatch, UsageRequestsQuery, UsageSimulate, UsageStatsQuery)
from llmgw_common.nats_conn import ensure_usage_stream
from llmgw_common.redis_conn import connect_redis
from llmgw_common.service import ServiceRuntime
from llmgw_common.settings import CommonSettings
from llmgw_common.windows import WindowReader

from . import deadletter
from .clickhouse_link import ClickHouseLink
from .consumer import UsageConsumer
from .handlers import QueryHandlers
from .ingest import BatchProcessor
from .key_layout import move_untagged_state
from .projection import ClickHouseProjection
from .store import ClickHouseStore
from .windows_follower import WindowFollower
from .windows_writer import WindowWriter

log = logging.getLogger("llmgw_usage")

SERVICE_NAME = "usage"
QUEUE_GROUP = "usage"


class UsageSettings(CommonSettings):
    # dev only: answer llmgw.usage.simulate (synthetic events into the stream)
    dev_simulate: bool = Field(default=False, alias="LLMGW_DEV_SIMULATE")
    # how long a delivered, unacknowledged event waits before JetStream hands it to another replica
    # (or to this one after a restart): the delay after a crash
    ack_wait_s: float = Field(default=30.0, gt=0, alias="LLMGW_USAGE_ACK_WAIT_S")


# A batch of usage events allocates a few objects per event: at the default threshold (700) the collector
# ran dozens of times per batch, walking every live object, for cycles the ingest does not make. It now runs
# every 50,000 allocations; bench-ingest: about 10-15 % more events per second.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often, and never walk the objects alive at start-up again (imports, config)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _ensure_stream(js, config: GatewayConfig) -> None:
    await ensure_usage_stream(js, max_age_s=config.usage.stream_max_age_days * 86400,
                              max_bytes=config.usage.stream_max_bytes)
    await deadletter.ensure_stream(js)


async def serve(settings: UsageSettings, config: GatewayConfig | None = None,
                stop_event: asyncio.Event | None = None) -> None:
    """Run until ``stop_event`` is set (or SIGINT/SIGTERM when it is None), then stop cleanly. A start-up
    failure (Redis away, an invalid stored config) ends it at once, everything opened closed again;
    ClickHouse away, or its schema behind, does not (``ClickHouseLink``). ``config``: the one to start with (tests); None: the config bucket's current revision."""
    runtime = ServiceRuntime(SERVICE_NAME, "usage windows, history, request log, dead letters, replay",
                             settings.nats_url, settings.config_path, queue_group=QUEUE_GROUP)
    nc = await runtime.connect()
    try:
        loaded = await runtime.load_config()
    except ConfigError as exc:
        log.error("%s", exc)
        await nc.close()
        raise SystemExit(2) from None
    config = config or loaded
    store = ClickHouseStore(settings.clickhouse_url, settings.state_dir / "clickhouse")
    runtime.on_close("clickhouse", store.close)
    js = nc.jetstream()
    redis = connect_redis(settings.redis_url)
    runtime.on_close("redis", redis.aclose)
    projection = ClickHouseProjection(store, redis)
    writer = WindowWriter(redis, config.keys.budget_timezone)
    # the consumer's batch size, as configured now (the consumer is made next: it needs the link's gate)
    clickhouse = ClickHouseLink(store, projection, WindowFollower(js, writer, lambda: consumer.batch_size))
    processor = BatchProcessor(projection, writer, dead_letters=deadletter.DeadLetters(js),
                               clickhouse_lost=clickhouse.lost)
    consumer = UsageConsumer(js, processor, config.usage.batch_size, config.usage.batch_wait_s, nc=nc,
                             ack_wait_s=settings.ack_wait_s, gate=clickhouse.gate)
    runtime.on_stop("consumer", consumer.stop)  # after the endpoints, before NATS drains

    async def load() -> None:
        await _ensure_stream(js, config)
        await redis.ping()
        await move_untagged_state(redis)  # once, after the upgrade to the {state} hash tag
        # one attempt now (a migrated, reachable ClickHouse is there from the first batch); else in the
        # background, while the windows follower keeps the windows current (clickhouse_link.py)
        await clickhouse.try_once()
        tune_gc()
        await consumer.start()
        log.info("usage service loaded (nats=%s, clickhouse=%s: %s)", settings.nats_url,
                 "server" if settings.clickhouse_url else f"chdb:{settings.state_dir / 'clickhouse'}",
                 clickhouse.detail)

    async def apply_config(new: GatewayConfig) -> None:
        consumer.configure(new.usage.batch_size, new.usage.batch_wait_s)
        writer.budget_tz = new.keys.budget_timezone
        try:
            await _ensure_stream(js, new)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not update the usage stream limits: %s", exc)
        log.info("usage config applied (batch_size=%d, batch_wait_s=%s)",
                 new.usage.batch_size, new.usage.batch_wait_s)

    queries = QueryHandlers(store, redis, WindowReader(redis, admitted=True), projection, js, settings.dev_simulate,
                            max_payload=lambda: nc.max_payload, budget_tz=lambda: writer.budget_tz)
    runtime.endpoint("current", subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery, queries.current)
    runtime.endpoint("history", subjects.USAGE_QUERY_HISTORY, UsageHistoryQuery, queries.history)
    runtime.endpoint("requests", subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery, queries.requests)
    runtime.endpoint("key", subjects.USAGE_QUERY_KEY, KeyUsageQuery, queries.key_usage)
    runtime.endpoint("stats", subjects.USAGE_QUERY_STATS, UsageStatsQuery, queries.stats)
    runtime.endpoint("dead", subjects.USAGE_QUERY_DEAD, UsageDeadLettersQuery, queries.dead_letters)
    runtime.endpoint("replay", subjects.USAGE_REPLAY, UsageReplayBatch, queries.replay)
    runtime.endpoint("simulate", subjects.USAGE_SIMULATE, UsageSimulate, queries.simulate)
    runtime.on_config(apply_config)
    runtime.loop("clickhouse", clickhouse.keep_trying)
    # ready: NATS, JetStream, Redis and the schema it needs; ClickHouse away only makes it "degraded" (the
    # windows still run, ClickHouse's batches wait in the stream)
    runtime.health_check("jetstream", health.jetstream(nc))
    runtime.health_check("redis", health.redis_ping(redis))
    runtime.health_check("schema", clickhouse.schema_probe)
    runtime.health_check("clickhouse", clickhouse.probe, degraded=True, timeout_s=5.0)
    await runtime.run(load=load, stop=stop_event, retry_load=False)


def run() -> None:
    settings = UsageSettings()
    service.main("usage", lambda: serve(settings), settings.log_level)


if __name__ == "__main__":
    run()
