"""``llmgw migrate``: the one-shot job of compose (`migrate`) and Kubernetes (the Job `llmgw-migrate`) applies
the usage service's ClickHouse migrations once; a second run finds nothing to do. Real Redis (its lock) and
ClickHouse (chDB under the state dir, or the server of CLICKHOUSE_URL), through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmgw_usage.schema import load_migrations

pytestmark = pytest.mark.integration


def _migrate(infra, state_dir) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url, LLMGW_STATE_DIR=str(state_dir))
    return subprocess.run([sys.executable, "-m", "llmgw_cli.main", "migrate"], env=env, capture_output=True,
                          text=True, timeout=180)


def test_migrate_applies_every_migration_once(infra, tmp_path):
    if infra.clickhouse_url:
        pytest.skip("a shared ClickHouse server may already be migrated: the first run's list is not known")
    first = _migrate(infra, tmp_path)
    assert first.returncode == 0, first.stderr
    versions = ", ".join(f"{m.version:04d}" for m in load_migrations())
    assert f"applied migrations {versions}" in first.stdout
    second = _migrate(infra, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
