"""Imports that leave out a library's optional extras the gateway never uses (memory: every service is a
long-lived process, and each of these costs it megabytes for nothing).

``absent(...)``: inside the block, importing one of the named modules raises ImportError, as if it were not
installed, unless it is already imported (then nothing changes). For libraries that import an optional
extra at their top and treat an ImportError as "not installed": chDB (pyarrow), httpx (its command line
client: click, pygments, rich).

``import_nats()``: nats-py imports aiohttp (~12 MB) for its WebSocket transport only; it is imported
without it, and the transport finds aiohttp when a ``ws://`` / ``wss://`` server is actually used.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Iterator


@contextlib.contextmanager
def absent(*names: str) -> Iterator[None]:
    blocked = [n for n in names if n not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # ``import name`` raises ImportError
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


class _ImportedOnUse:
    """Stands for a module in another module's namespace; the module is imported on first attribute use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def import_nats() -> None:
    """Import nats-py without aiohttp unless aiohttp is already loaded; call before anything imports nats."""
    if "nats" in sys.modules or "aiohttp" in sys.modules:
        return
    with absent("aiohttp"):
        import nats.aio.transport as transport
    if transport.aiohttp is None:  # WebSocket transport: aiohttp when a ws:// server is used
        transport.aiohttp = _ImportedOnUse("aiohttp")
