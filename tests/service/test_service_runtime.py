"""The service runtime (``llmgw_common.service``) over a real NATS: nothing answers before ``load`` is
done, typed handlers and their errors, the version from the package, the ordered stop."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.errors import NoRespondersError

from llmgw_common.messages import Message, PinCommand, RouterState
from llmgw_common.nats_conn import RemoteError, connect_nats, request
from llmgw_common.service import ServiceError, ServiceRuntime, package_version

pytestmark = pytest.mark.integration

SUBJECT = "llmgw.test.runtime.echo"


async def _answer(nc, body: bytes):
    return await nc.request(SUBJECT, body, timeout=5)


async def test_runtime_answers_only_after_load_and_stops_in_order(infra, tmp_path):
    nc = await connect_nats(infra.nats_url, "test-runtime")
    loaded, gate, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    attempts: list[int] = []
    order: list[str] = []

    async def load() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("redis not up yet")  # retried
        await gate.wait()
        loaded.set()

    async def echo(cmd: PinCommand) -> RouterState:
        if cmd.provider == "refuse":
            raise ServiceError(404, "unknown provider 'refuse'")
        if cmd.provider == "crash":
            raise RuntimeError("secret-detail-that-must-not-leak")
        return RouterState(pinned=cmd.provider)

    runtime = ServiceRuntime("runtimetest", "a test service", infra.nats_url, tmp_path / "none.yaml")
    observed: list[tuple[str | None, bool]] = []
    runtime.endpoint("echo", SUBJECT, PinCommand, echo, concurrent=True,
                     observe=lambda cmd, reply, seconds: observed.append((cmd.provider, reply is not None)),
                     failure=ServiceError(503, "cannot reach the shared state"))
    runtime.endpoint("plain", SUBJECT + ".plain", PinCommand, echo)
    runtime.on_stop("first", lambda: order.append("stop"))
    runtime.on_close("last", lambda: order.append("close"))
    task = asyncio.create_task(runtime.run(load=load, stop=stop))
    try:
        while len(attempts) < 2:  # the first load failed; the second waits for the gate
            await asyncio.sleep(0.05)
        with pytest.raises(NoRespondersError):  # loading: not subscribed yet
            await _answer(nc, PinCommand(provider="x").encode())
        gate.set()
        await loaded.wait()
        state = None
        for _ in range(200):  # subscribed right after load returned: ask until it answers (bounded)
            try:
                state = await request(nc, SUBJECT, PinCommand(provider="x"), RouterState, timeout=5)
                break
            except NoRespondersError:
                await asyncio.sleep(0.05)
        assert state is not None and state.pinned == "x"

        with pytest.raises(RemoteError) as refused:
            await request(nc, SUBJECT, PinCommand(provider="refuse"), RouterState, timeout=5)
        assert refused.value.status == 404 and "unknown provider" in str(refused.value)
        crashed = await _answer(nc, PinCommand(provider="crash").encode())
        assert crashed.headers["Nats-Service-Error-Code"] == "503"  # the endpoint's failure answer
        assert crashed.headers["Nats-Service-Error"] == "cannot reach the shared state"
        assert observed[-3:] == [("x", True), ("refuse", False), ("crash", False)]
        plain = await nc.request(SUBJECT + ".plain", PinCommand(provider="crash").encode(), timeout=5)
        assert plain.headers["Nats-Service-Error-Code"] == "500"
        assert "secret-detail" not in plain.headers["Nats-Service-Error"]
        bad = await _answer(nc, b'{"provider": 12')
        assert bad.headers["Nats-Service-Error-Code"] == "400"
        assert "Traceback" not in bad.headers["Nats-Service-Error"]

        info = json.loads((await nc.request("$SRV.INFO.runtimetest", b"", timeout=5)).data)
        assert info["version"] == package_version() != "0.0.0"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert order == ["stop", "close"]
    with pytest.raises(NoRespondersError):
        await _answer(nc, Message().encode())
    await nc.close()


async def test_a_retried_start_keeps_one_key_mirror(infra):
    """The router's load starts the key mirror; a load that is retried must not start a second watch."""
    from llmgw_common.keys import KeyMirror

    nc = await connect_nats(infra.nats_url, "test-runtime-keys")
    mirror = KeyMirror()
    try:
        await mirror.start(nc.jetstream())
        await mirror.start(nc.jetstream())
        assert len([t for t in asyncio.all_tasks() if t.get_name() == "key-mirror"]) == 1
    finally:
        await mirror.stop()
        await nc.close()
