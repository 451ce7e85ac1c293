"""A router that starts (or restarts after kill -9) answers nothing before it has read the shared state:
its very first routing answer already honours the pin in Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_cli.infra import RedisServer
from llmgw_common import redis_keys, subjects
from llmgw_common.messages import PinCommand, RouteDecision, RouteRequest, RouterState
from llmgw_common.nats_conn import connect_nats, request
from llmgw_common.redis_conn import connect_redis

pytestmark = pytest.mark.integration

# "first" wins by priority; only the pin sends a request to "second"
CONFIG = """
providers:
  - id: first
    base_url: http://127.0.0.1:9/v1
    priority: 1
    models: [{name: m}]
  - id: second
    base_url: http://127.0.0.1:9/v1
    priority: 2
    models: [{name: m}]
pricing: {fetch_on_start: false}
"""


def _start_router(infra, config, redis_url: str | None = None, log: list[str] | None = None) -> subprocess.Popen:
    """The router as its own process (``llmgw router``); ``log`` collects its log lines when given."""
    env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=redis_url or infra.redis_url,
               LLMGW_CONFIG=str(config))
    env.pop("LLMGW_METRICS_PORT", None)
    proc = subprocess.Popen([sys.executable, "-c", "from llmgw_router.main import run; run()"], env=env,
                            stderr=subprocess.PIPE if log is not None else None, text=True)
    if log is not None:
        threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return proc


async def _first_answer(nc, proc: subprocess.Popen, timeout_s: float = 30.0) -> RouteDecision:
    """Ask again and again from the moment the router process starts: the first answer it gives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    n = 0
    while loop.time() < deadline:
        assert proc.poll() is None, "the router exited"
        n += 1
        try:
            return await request(nc, subjects.ROUTER_DECIDE, RouteRequest(request_id=f"restart-{n}", model="m"),
                                 RouteDecision, timeout=2.0)
        except (NoRespondersError, NatsTimeoutError):
            await asyncio.sleep(0)  # nobody subscribed yet: ask again at once
    raise AssertionError("the router never answered")


async def test_first_answer_after_kill_9_honours_the_pin(infra, tmp_path):
    config = tmp_path / "llmgw.yaml"
    config.write_text(CONFIG)
    nc = await connect_nats(infra.nats_url, "test-router-restart")
    redis = connect_redis(infra.redis_url)
    await redis.delete(redis_keys.PIN, redis_keys.SMART)
    old = _start_router(infra, config)
    new = None
    try:
        assert (await _first_answer(nc, old)).candidates[0].provider == "first"
        state = await request(nc, subjects.ROUTER_PIN, PinCommand(provider="second"), RouterState, timeout=10)
        assert state.pinned == "second"
        old.send_signal(signal.SIGKILL)
        old.wait(10)

        new = _start_router(infra, config)
        decision = await _first_answer(nc, new)
        assert decision.error is None and decision.candidates[0].provider == "second", decision
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await redis.delete(redis_keys.PIN, redis_keys.SMART)
        await redis.aclose()
        await nc.close()


async def _pinged(nc, name: str) -> bool:
    """Whether a ``name`` micro service is registered (answers ``$SRV.PING``)."""
    try:
        await nc.request(f"$SRV.PING.{name}", b"", timeout=2.0)
        return True
    except NoRespondersError:
        return False


async def test_a_router_that_cannot_read_its_state_answers_nothing(infra, tmp_path):
    """Redis away while a router starts: it does not register (the edge asks another replica, or retries)
    until it has read the pin; then its first answer honours it."""
    config = tmp_path / "llmgw.yaml"
    config.write_text(CONFIG)
    redis_server = RedisServer(tmp_path / "redis", persist=True, log_file=tmp_path / "redis.log").start()
    nc = await connect_nats(infra.nats_url, "test-router-no-state")
    log: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_router(infra, config, redis_server.url))
        await _first_answer(nc, procs[0])
        await request(nc, subjects.ROUTER_PIN, PinCommand(provider="second"), RouterState, timeout=10)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        for _ in range(50):  # NATS has noticed the dead connection: the old registration is gone
            if not await _pinged(nc, "router"):
                break
        redis_server.stop()  # the pin is in its append-only file

        procs.append(_start_router(infra, config, redis_server.url, log))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any("cannot load its state yet" in line for line in log):  # it is up, retrying its load
            assert procs[1].poll() is None, "".join(log)
            assert not await _pinged(nc, "router"), "a router registered before it read its state:\n" + "".join(log)
            assert loop.time() < deadline, "".join(log)
        assert not await _pinged(nc, "router")
        with pytest.raises(NoRespondersError):
            await request(nc, subjects.ROUTER_DECIDE, RouteRequest(request_id="too-early", model="m"),
                          RouteDecision, timeout=2.0)

        redis_server.start()
        decision = await _first_answer(nc, procs[1])
        assert decision.error is None and decision.candidates[0].provider == "second", decision
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await nc.close()
        redis_server.stop()
