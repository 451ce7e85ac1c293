"""Numbered ClickHouse schema migrations (``migrations/NNNN_name.sql``).

Applied in order at start-up and recorded in ``schema_migrations``. Several
replicas may start at once against one ClickHouse server: every statement is
written to be idempotent (``IF NOT EXISTS``) and ``schema_migrations`` is a
ReplacingMergeTree read with FINAL, so a migration two replicas both apply is
harmless and still shows up once.

Everything here is synchronous: it runs on the ClickHouse worker thread.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements on ``;`` at the end of a line; ``--`` comment lines dropped."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            stmt = "\n".join(current).strip().rstrip(";").strip()
            if stmt:
                statements.append(stmt)
            current = []
    tail = "\n".join(current).strip().rstrip(";").strip()
    if tail:
        statements.append(tail)
    return statements


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every ``NNNN_name.sql`` file, sorted by version; duplicate versions are an error."""
    directory = MIGRATIONS_DIR if directory is None else Path(directory)
    entries = [(p.name, p) for p in directory.iterdir()]
    found: dict[int, Migration] = {}
    for name, path in entries:
        m = _FILE.match(name)
        if not m:
            continue
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version:04d}: {found[version].name} and {m.group(2)}")
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def applied_versions(client) -> set[int]:
    rows = client.query("SELECT version FROM schema_migrations FINAL").result_rows
    return {int(r[0]) for r in rows}


def apply_migrations(client, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now."""
    if migrations is None:
        migrations = load_migrations()
    client.command(SCHEMA_MIGRATIONS_DDL)
    done = applied_versions(client)
    applied: list[int] = []
    for mig in migrations:
        if mig.version in done:
            continue
        log.info("applying migration %04d_%s", mig.version, mig.name)
        for stmt in mig.statements():
            client.command(stmt)
        client.insert("schema_migrations", [[mig.version, mig.name]], column_names=["version", "name"])
        applied.append(mig.version)
    return applied
