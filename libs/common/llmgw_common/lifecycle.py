"""Process lifecycle: wait for SIGINT/SIGTERM so services stop cleanly under the runner or a container."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_stop(stop: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM (which set ``stop`` too, when given: a start-up step may watch it)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
