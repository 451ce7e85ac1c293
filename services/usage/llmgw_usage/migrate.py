"""``llmgw migrate``: the usage service's ClickHouse migrations, applied once, as a job.

Compose runs it as the one-shot service ``migrate`` and Kubernetes as the Job ``llmgw-migrate``
(deploy/k8s), before the usage replicas start. The usage service still applies pending migrations when it
starts (``ClickHouseStore.open``, unchanged): with the job done first, the replicas find nothing to do.

Several runs at once (a Job retried while the first attempt still runs, two deployments) take turns on a
Redis lock; the statements are idempotent besides (``schema.py``), so the lock only spares the server
the same DDL twice. Without ``CLICKHOUSE_URL`` it migrates the chDB data under the state dir, which belongs
to one process: the usage service's, which must not be running then.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from pathlib import Path

from pydantic_settings import BaseSettings

from llmgw_common import redis_keys
from llmgw_common.logs import setup_logging
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings

from .store import ClickHouseStore

log = logging.getLogger("llmgw.usage.migrate")

LOCK_KEY = redis_keys.MIGRATE_LOCK
LOCK_TIMEOUT_S = 300  # expires by itself if the job dies holding it
WAIT_S = 600  # a run waits this long for another one to finish

_COMMON = CommonSettings.model_fields


class MigrateSettings(BaseSettings):
    """What the job reads: the common settings it uses, no more (it needs no NATS, no gateway config)."""

    model_config = CommonSettings.model_config

    redis_url: str = _COMMON["redis_url"]
    clickhouse_url: str = _COMMON["clickhouse_url"]
    state_dir: Path = _COMMON["state_dir"]
    log_level: str = _COMMON["log_level"]


async def migrate(settings: MigrateSettings) -> list[int]:
    """Apply the pending migrations under the lock; returns the versions applied now."""
    redis = connect_redis(settings.redis_url)
    try:
        async with redis.lock(LOCK_KEY, timeout=LOCK_TIMEOUT_S, blocking_timeout=WAIT_S):
            store = ClickHouseStore(settings.clickhouse_url, settings.state_dir / "clickhouse")
            try:
                return await store.open()
            finally:
                await store.close()
    finally:
        await redis.aclose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=cmd_migrate)


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = MigrateSettings()
    setup_logging("migrate", settings.log_level)
    applied = asyncio.run(migrate(settings))
    where = "the ClickHouse server" if settings.clickhouse_url else f"chDB in {settings.state_dir / 'clickhouse'}"
    if applied:
        print(f"{where}: applied migrations {', '.join(f'{v:04d}' for v in applied)}", flush=True)
    else:
        print(f"{where}: up to date", flush=True)
    return 0
