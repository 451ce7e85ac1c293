"""Memory: what the long-lived processes leave out (llmgw_common.lean_imports and its users)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmgw_common.lean_imports import absent


def _in_child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_absent_hides_modules_only_inside_the_block_and_never_one_already_imported():
    name = "llmgw_no_such_module_xyz"
    with absent(name, "json"):
        with pytest.raises(ImportError):
            __import__(name)
        import json  # already imported: untouched

        assert json.dumps(1) == "1"
    assert name not in sys.modules


def test_nats_without_aiohttp_until_a_websocket_needs_it():
    out = _in_child(
        "import sys\n"
        "from llmgw_common.lean_imports import import_nats\n"
        "import_nats()\n"
        "import nats, nats.aio.transport as t\n"
        "print('aiohttp' in sys.modules)\n"
        "print(t.aiohttp.WSMsgType.BINARY.name, 'aiohttp' in sys.modules)\n")
    assert out.splitlines() == ["False", "BINARY True"]


def test_service_commands_import_only_their_own_arguments():
    out = _in_child(
        "import sys\n"
        "from llmgw_cli.main import build_parser, _command_of\n"
        "args = build_parser(_command_of(['router'])).parse_args(['router'])\n"
        "print(args.service, sorted(m for m in ('httpx', 'yaml', 'pydantic', 'uvloop') if m in sys.modules))\n")
    assert out == "router []"


def test_the_supervisor_imports_no_schema_and_no_client_library():
    out = _in_child(
        "import sys\n"
        "import llmgw_cli.main, llmgw_cli.runner, llmgw_cli.starter\n"
        "print(sorted(m for m in ('pydantic', 'yaml', 'nats', 'asyncio', 'urllib.request', 'hashlib')\n"
        "             if m in sys.modules))\n")
    assert out == "[]"


def test_clickhouse_without_dataframe_libraries(tmp_path):
    out = _in_child(
        "import sys\n"
        "from llmgw_common.clickhouse_conn import connect_clickhouse\n"
        f"c = connect_clickhouse('', {str(tmp_path / 'ch')!r})\n"
        "c.command('CREATE TABLE t (a UInt32, s String, d DateTime64(3)) ENGINE = MergeTree ORDER BY a')\n"
        "c.insert('t', [[1, 'x', 0]], column_names=['a', 's', 'd'])\n"
        "print(c.query('SELECT a, s FROM t').result_rows)\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'polars') if m in sys.modules))\n")
    assert out.splitlines() == ["[(1, 'x')]", "[]"]


def test_the_edge_core_loads_no_http_library_no_codec_and_no_provider():
    """Layers that point one way: the core owns the provider interface (core/provider.py) and the gateway;
    codecs (api/) and providers depend on it, never the other way, and no HTTP client or server comes
    with it."""
    out = _in_child(
        "import pkgutil, sys, importlib\n"
        "import llmgw_edge.core as core\n"
        "names = [m.name for m in pkgutil.iter_modules(core.__path__, 'llmgw_edge.core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print('llmgw_edge.core.gateway' in names and 'llmgw_edge.core.provider' in names)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'httpx', 'starlette', 'fastapi')\n"
        "             or m.startswith(('llmgw_edge.api', 'llmgw_edge.providers', 'llmgw_edge.commands'))))\n")
    assert out.splitlines() == ["True", "[]"]
