"""Wiring of the usage service: ``llmgw usage`` runs ``run()``; tests run ``serve()`` in-process."""

from __future__ import annotations

import asyncio
import gc
import logging

import uvloop
from nats.micro import add_service
from pydantic import Field

from llmgw_common import metrics, subjects, tracing
from llmgw_common.config import ConfigError, GatewayConfig, load_config_or_default
from llmgw_common.lifecycle import wait_for_stop
from llmgw_common.logs import setup_logging
from llmgw_common.nats_conn import connect_nats, ensure_usage_stream
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings
from llmgw_common.windows import WindowReader

from . import deadletter
from .consumer import UsageConsumer
from .handlers import BatchProcessor, QueryHandlers
from .projection import ClickHouseProjection
from .store import ClickHouseStore
from .windows_writer import WindowWriter

log = logging.getLogger("llmgw_usage")

SERVICE_NAME = "usage"
SERVICE_VERSION = "0.1.0"
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


def load_gateway_config(settings: CommonSettings) -> GatewayConfig:
    """The config file, or the defaults when there is none (a broken file is an error)."""
    if not settings.config_path.exists():
        log.info("no config file at %s; using defaults", settings.config_path)
    return load_config_or_default(settings.config_path)


async def _ensure_stream(js, config: GatewayConfig) -> None:
    await ensure_usage_stream(js, max_age_s=config.usage.stream_max_age_days * 86400,
                              max_bytes=config.usage.stream_max_bytes)
    await deadletter.ensure_stream(js)


async def serve(settings: UsageSettings, config: GatewayConfig, stop_event: asyncio.Event | None = None) -> None:
    """Run until ``stop_event`` is set (or SIGINT/SIGTERM when it is None), then stop cleanly."""
    store = ClickHouseStore(settings.clickhouse_url, settings.state_dir / "clickhouse")
    nc = redis = consumer = service = None
    try:
        nc = await connect_nats(settings.nats_url, name="llmgw-usage")
        js = nc.jetstream()
        await _ensure_stream(js, config)
        await store.open()
        redis = connect_redis(settings.redis_url)
        await redis.ping()

        projection = ClickHouseProjection(store, redis)
        await projection.recover()  # inserts a crash cut short, before anything new
        writer = WindowWriter(redis, config.keys.budget_timezone)
        processor = BatchProcessor(projection, writer, dead_letters=deadletter.DeadLetters(js))
        tune_gc()
        consumer = UsageConsumer(js, processor, config.usage.batch_size, config.usage.batch_wait_s, nc=nc,
                                 ack_wait_s=settings.ack_wait_s)
        await consumer.start()

        async def on_config_changed(_msg) -> None:
            try:
                new = load_gateway_config(settings)
            except ConfigError as exc:
                log.warning("config change ignored: %s", exc)
                return
            consumer.configure(new.usage.batch_size, new.usage.batch_wait_s)
            writer.budget_tz = new.keys.budget_timezone
            try:
                await _ensure_stream(js, new)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not update the usage stream limits: %s", exc)
            log.info("usage config applied (batch_size=%d, batch_wait_s=%s)",
                     new.usage.batch_size, new.usage.batch_wait_s)

        await nc.subscribe(subjects.CONFIG_CHANGED, cb=on_config_changed)

        queries = QueryHandlers(store, redis, WindowReader(redis), projection, js, settings.dev_simulate,
                                max_payload=lambda: nc.max_payload, budget_tz=lambda: writer.budget_tz)
        service = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION, queue_group=QUEUE_GROUP,
                                    description="usage windows, history, request log, dead letters, replay")
        await service.add_endpoint(name="current", subject=subjects.USAGE_QUERY_CURRENT, handler=queries.current)
        await service.add_endpoint(name="history", subject=subjects.USAGE_QUERY_HISTORY, handler=queries.history)
        await service.add_endpoint(name="requests", subject=subjects.USAGE_QUERY_REQUESTS, handler=queries.requests)
        await service.add_endpoint(name="key", subject=subjects.USAGE_QUERY_KEY, handler=queries.key_usage)
        await service.add_endpoint(name="stats", subject=subjects.USAGE_QUERY_STATS, handler=queries.stats)
        await service.add_endpoint(name="dead", subject=subjects.USAGE_QUERY_DEAD, handler=queries.dead_letters)
        await service.add_endpoint(name="replay", subject=subjects.USAGE_REPLAY, handler=queries.replay)
        await service.add_endpoint(name="simulate", subject=subjects.USAGE_SIMULATE, handler=queries.simulate)
        await nc.flush()
        log.info("usage service ready (nats=%s, clickhouse=%s)", settings.nats_url,
                 "server" if settings.clickhouse_url else f"chdb:{settings.state_dir / 'clickhouse'}")

        if stop_event is None:
            await wait_for_stop()
        else:
            await stop_event.wait()
        log.info("usage service stopping")
    finally:
        await _shutdown(nc, redis, consumer, service, store)


async def _shutdown(nc, redis, consumer, service, store: ClickHouseStore) -> None:
    steps = []
    if service is not None:
        steps.append(("queries", service.stop()))
    if consumer is not None:
        steps.append(("consumer", consumer.stop()))
    for name, step in steps:
        try:
            await step
        except Exception as exc:  # noqa: BLE001
            log.warning("stopping %s: %s", name, exc)
    if nc is not None:
        try:
            await asyncio.wait_for(nc.drain(), 10)
        except Exception as exc:  # noqa: BLE001
            log.warning("nats drain: %s", exc)
        if not nc.is_closed:
            await nc.close()
    if redis is not None:
        try:
            await redis.aclose()
        except Exception as exc:  # noqa: BLE001
            log.warning("redis close: %s", exc)
    try:
        await store.close()
    except Exception as exc:  # noqa: BLE001
        log.warning("clickhouse close: %s", exc)


def run() -> None:
    settings = UsageSettings()
    setup_logging("usage", settings.log_level)
    tracing.setup("usage")
    metrics.serve_from_env()  # LLMGW_METRICS_PORT
    try:
        config = load_gateway_config(settings)
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    try:
        uvloop.run(serve(settings, config))  # uvloop: a faster event loop, as the HTTP services use
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run()
