"""Numbered ClickHouse schema migrations (``migrations/NNNN_name.sql``).

Applied in order by ``llmgw migrate`` (the one-shot job, ``migrate.py``; ``llmgw run`` runs it before
the services) and recorded in ``schema_migrations``. The usage service never applies them: it reads the
applied version (``schema_status``, no DDL) and waits while it is behind. Two runs of the job at once take
turns on a Redis lock, and every statement is idempotent besides (``IF NOT EXISTS``; ``schema_migrations``
is a ReplacingMergeTree read with FINAL), so a migration applied twice is harmless and still shows up once.

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


def required_version(migrations: list[Migration] | None = None) -> int:
    """The schema version this code needs: its newest migration."""
    migrations = load_migrations() if migrations is None else migrations
    return max((m.version for m in migrations), default=0)


@dataclass(frozen=True)
class SchemaStatus:
    """The applied schema as a reader sees it: the versions recorded, and which needed ones are missing."""

    have: int  # the newest version applied (0: none, or no schema_migrations table)
    missing: tuple[int, ...]  # needed versions not applied (a gap counts, not only a lower maximum)
    need: int

    @property
    def current(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.current:
            return f"schema version {self.have}"
        return f"waiting for schema {self.need}, have {self.have}: run llmgw migrate"


def schema_status(client, migrations: list[Migration] | None = None) -> SchemaStatus:
    """Which migrations are applied, read only: no table is created (a missing ``schema_migrations`` is
    an unmigrated database)."""
    migrations = load_migrations() if migrations is None else migrations
    exists = client.query("SELECT count() FROM system.tables WHERE database = currentDatabase()"
                          " AND name = 'schema_migrations'").result_rows[0][0]
    done = applied_versions(client) if exists else set()
    missing = tuple(m.version for m in migrations if m.version not in done)
    return SchemaStatus(max(done, default=0), missing, required_version(migrations))


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
