"""ClickHouse connection helper: a server over HTTP when a URL is given, else chDB in-process.

chDB is synchronous and a data directory belongs to one process: only the
usage service opens it, from a single worker thread.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect


def connect_clickhouse(url: str, chdb_path: Path | str, database: str = "llmgw"):
    """Return a clickhouse-connect client bound to ``database`` (created if missing)."""
    if url:
        u = urlparse(url)
        kwargs = dict(host=u.hostname or "127.0.0.1", port=u.port or (8443 if u.scheme == "https" else 8123),
                      username=u.username or "default", password=u.password or "",
                      secure=u.scheme == "https")
        db = (u.path or "/").strip("/") or database
        admin = clickhouse_connect.get_client(**kwargs)
        admin.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        admin.close()
        return clickhouse_connect.get_client(database=db, **kwargs)
    Path(chdb_path).mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_path))
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(f"USE {database}")
    client.database = database
    return client
