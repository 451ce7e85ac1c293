"""ClickHouse connection helper: a server over HTTP when a URL is given, else chDB in-process.

chDB is synchronous and a data directory belongs to one process: only the
usage service opens it, from a single worker thread.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect

from .lean_imports import absent

# Optional libraries clickhouse-connect and chDB import whenever they are installed (as a dependency of
# something else), only to offer NumPy, Arrow, DataFrame and Polars results and inputs, which the gateway
# never uses: numpy, pyarrow and pandas cost the usage process about 115 MB of memory. Both libraries
# take an ImportError as "not installed".
_OPTIONAL_LIBRARIES = {"np": "numpy", "pd": "pandas", "pd_time_test": "pandas", "arrow": "pyarrow", "pl": "polars"}


def _without_optional_libraries(embedded: bool) -> None:
    """Keep numpy, pyarrow, pandas and polars out of this process unless something already loaded them."""
    from clickhouse_connect.driver import options

    for attr, module in _OPTIONAL_LIBRARIES.items():
        if module not in sys.modules and attr not in vars(options):
            setattr(options, attr, None)  # what clickhouse-connect records when the import fails
    if embedded and "chdb.state" not in sys.modules:
        with absent("pyarrow"):
            try:
                import chdb.state  # noqa: F401  # imports pyarrow at its top, optionally (Arrow results only)
            except ImportError:
                pass  # no chDB: clickhouse-connect says so below


def connect_clickhouse(url: str, chdb_path: Path | str, database: str = "llmgw"):
    """Return a clickhouse-connect client bound to ``database`` (created if missing)."""
    _without_optional_libraries(embedded=not url)
    if url:
        u = urlparse(url)
        kwargs: dict[str, Any] = dict(host=u.hostname or "127.0.0.1", port=u.port or (8443 if u.scheme == "https" else 8123),
                      username=u.username or "default", password=u.password or "",
                      secure=u.scheme == "https")
        db = (u.path or "/").strip("/") or database
        admin = clickhouse_connect.get_client(**kwargs)
        admin.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        admin.close()
        return clickhouse_connect.get_client(database=db, **kwargs)
    if importlib.util.find_spec("chdb") is None:  # an extra: the server image leaves it out
        raise RuntimeError("CLICKHOUSE_URL is not set and chDB is not installed: give CLICKHOUSE_URL a ClickHouse "
                           "server, or install chDB for one machine (pip install 'llmgw[chdb]'; make does)")
    Path(chdb_path).mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_path))
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(f"USE {database}")
    client.database = database
    return client
