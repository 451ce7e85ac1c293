"""``llmgw migrate``: the usage service's ClickHouse migrations, applied once, as a job.

Compose runs it as the one-shot service ``migrate``, Kubernetes as the Job ``llmgw-migrate`` (deploy/k8s),
and ``llmgw run`` runs it before it starts the services. It is the only writer of the schema: the usage
service reads the applied version and waits while it is behind (``clickhouse_link.py``), never migrating.

Several runs at once (a Job retried while the first attempt still runs, two deployments) take turns on a
Redis lock; the statements are idempotent besides (``schema.py``), so the lock only spares the server
the same DDL twice. Without ``CLICKHOUSE_URL`` it migrates the chDB data under the state dir, which belongs
to one process at a time: a usage service waiting for the schema only holds it for its brief checks, and
the job waits for those (``BUSY_WAIT_S``); a usage service that runs (attached) must be stopped first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

from pydantic_settings import BaseSettings

from llmgw_common import redis_keys
from llmgw_common.logs import setup_logging
from llmgw_common.redis_conn import connect_redis
from llmgw_common.settings import CommonSettings

from .store import ClickHouseStore, StoreBusyError

log = logging.getLogger("llmgw.usage.migrate")

LOCK_KEY = redis_keys.MIGRATE_LOCK
LOCK_TIMEOUT_S = 300  # expires by itself if the job dies holding it
WAIT_S = 600  # a run waits this long for another one to finish
BUSY_WAIT_S = 30.0  # and this long for the chDB directory held by another process (a usage service's check)
BUSY_RETRY_S = 0.2

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
            return await _migrate_when_free(settings)
    finally:
        await redis.aclose()


async def _migrate_when_free(settings: MigrateSettings) -> list[int]:
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        store = ClickHouseStore(settings.clickhouse_url, settings.state_dir / "clickhouse")
        try:
            return await store.open()
        except StoreBusyError:
            if time.monotonic() > deadline:
                raise
        finally:
            await store.close()
        await asyncio.sleep(BUSY_RETRY_S)


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
