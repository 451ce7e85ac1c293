"""``llmgw run`` as a user runs it: starter config, demo provider, a counted request, clean Ctrl-C; supervision
of its own nats-server and Redis; health checks and the changes the runner prints."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from fakes import FakeProvider
from llmgw_cli.infra import InfraError, NatsServer, free_port, port_is_free
from llmgw_cli.runner import HealthWatch, Stack, _http_get, _wait_jetstream, describe_exit, restart_delay
from llmgw_common import health
from stacks import ctrl_c_stops, supervised_stack, wait_for

pytestmark = pytest.mark.integration

# the admin API (ui-api) wants a bearer token: the stacks here give their ui-api this one
ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(24)
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


def test_llmgw_run_end_to_end_and_ctrl_c(tmp_path):
    edge, ui, demo = free_port(), free_port(), free_port()
    config = tmp_path / "llmgw.yaml"
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "REDIS_URL", "CLICKHOUSE_URL") and not k.endswith("_API_KEY")}
    env["LLMGW_DEMO_PORT"] = str(demo)
    env["LLMGW_ADMIN_TOKEN"] = ADMIN_TOKEN
    proc = subprocess.Popen([sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(config),
                             "--state-dir", str(state), "--edge-port", str(edge), "--ui-port", str(ui)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_stops)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            output.append(line)
            if "gateway ready" in line or time.monotonic() > deadline:
                break
        assert "gateway ready" in "".join(output), "".join(output)
        assert "demo-chat" in config.read_text()  # the starter config was written
        # `llmgw migrate` ran before the services (the usage service never migrates)
        assert "applied migrations 0001" in "".join(output), "".join(output)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{edge}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Echo: hi"

        def demo_requests() -> int:
            scopes = httpx.get(f"http://127.0.0.1:{ui}/api/usage/current", headers=ADMIN).json()["scopes"]
            return sum(s["windows"]["minute"]["requests"] for s in scopes if s["scope"] == "provider")

        wait_for(lambda: demo_requests() >= 1, timeout=20)  # the request shows up in /api/usage/current
        # and in ClickHouse (the usage service attached to the migrated chDB)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{ui}/api/requests", headers=ADMIN).json()["rows"], timeout=20)

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        assert not _processes_mentioning(str(state)), "children left behind after Ctrl-C"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{edge}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _signal_group(pgid: int, *signals: signal.Signals) -> None:
    for sig in signals:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:  # already gone: nothing left to stop
            return


def test_signals_to_the_process_group_repeated_stop_it_once_and_cleanly(tmp_path):
    """``make run`` stopped by a SIGTERM to its process group: make forwards a second one at once, and an
    impatient user adds Ctrl-C while it stops. One orderly stop: no traceback, "stopped", no children left,
    and the runtime file (which sends the CLI to the gateway's NATS) is gone with the stack."""
    edge, ui, demo = free_port(), free_port(), free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in _own_servers_env().items() if not k.startswith("LLMGW_ADMIN")}  # a generated token
    env["LLMGW_DEMO_PORT"] = str(demo)
    proc = subprocess.Popen([sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(tmp_path / "llmgw.yaml"),
                             "--state-dir", str(state), "--edge-port", str(edge), "--ui-port", str(ui)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as make and its recipe have
    output: list[str] = []

    def read_until(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            output.append(line)
            if text in line or time.monotonic() > deadline:
                break
        assert text in "".join(output), "".join(output)

    try:
        read_until("gateway ready", 120)
        runtime_file = state / "runtime.json"
        assert json.loads(runtime_file.read_text())["pid"] == proc.pid
        _signal_group(proc.pid, signal.SIGTERM, signal.SIGTERM)
        read_until("stopping...", 30)
        _signal_group(proc.pid, signal.SIGINT, signal.SIGTERM, signal.SIGINT)  # during the stop
        rest, _ = proc.communicate(timeout=60)
        text = "".join(output) + rest
        assert proc.returncode == 0, text
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert text.count("stopping...") == 1 and rest.rstrip().endswith("stopped"), text
        assert not runtime_file.exists()
        assert not _processes_mentioning(str(state)), "children left behind"
        # the ui-api's start line says where its token is, with nothing in it for the log redaction to mask
        assert "[REDACTED]" not in text and f"admin token is in the file {state / 'admin-token'}" in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_port_left_in_time_wait_is_free_but_a_listening_one_is_not():
    """Restarting right after a stop: the old server's closed connections sit in TIME_WAIT."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    assert not port_is_free(port)
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    listener.close()
    wait_for(lambda: port_is_free(port), timeout=5)  # TIME_WAIT lasts a minute: "free" must not wait for it



# ---- supervision: nats-server and Redis die and come back; health says so --------------------------


def test_restart_backoff_and_exit_descriptions():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(100) == 30.0
    assert restart_delay(1, base_s=3) == 3
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exited with 1"


def _own_servers_env() -> dict[str, str]:
    """The environment without NATS_URL / REDIS_URL: the stack starts (and supervises) its own servers."""
    return {k: v for k, v in os.environ.items()
            if k not in ("NATS_URL", "REDIS_URL", "CLICKHOUSE_URL") and not k.endswith("_API_KEY")} | {
        "LLMGW_ADMIN_TOKEN": ADMIN_TOKEN}


def _health(url: str) -> tuple[int, dict]:
    r = httpx.get(url, timeout=10)
    return r.status_code, r.json()


def test_supervised_nats_and_redis_come_back_on_their_port_with_their_data(tmp_path):
    """kill -9 of the stack's own Redis, then of its nats-server: while each is down both health endpoints
    answer 503 naming it and a request gets a quick 503; each comes back on the same port with its data (Redis's
    append-only file, the JetStream file store), the services reconnect by themselves, nothing is lost."""
    with FakeProvider(models=["demo-chat"]) as upstream, supervised_stack(tmp_path, f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models: [{{name: m, upstream: demo-chat}}]
usage: {{batch_wait_s: 0.1}}
""", _own_servers_env(), restart_base_s=4) as stack:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="unused", max_retries=0,
                               timeout=10)
        edge_health = f"http://127.0.0.1:{stack.edge_port}/healthz"
        ui_health = f"http://127.0.0.1:{stack.ui_port}/api/health"
        ui = f"http://127.0.0.1:{stack.ui_port}"
        served = 0

        def chat() -> None:
            nonlocal served
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            served += 1

        def counted() -> tuple[int, int]:
            history = httpx.get(f"{ui}/api/usage/history", params={"provider": "p"}, headers=ADMIN,
                                timeout=10).json()["rows"]
            scopes = httpx.get(f"{ui}/api/usage/current", headers=ADMIN, timeout=10).json()["scopes"]
            day = sum(s["windows"]["day"]["requests"] for s in scopes if s["scope"] == "provider")
            return sum(r["requests"] for r in history), day

        chat()
        assert _health(edge_health)[1]["checks"].keys() == {"nats", "jetstream", "router", "redis", "plans", "leases",
                                                            "config"}
        assert _health(ui_health)[1]["checks"].keys() == {"nats", "jetstream", "redis", "router", "usage", "pricing",
                                                          "clickhouse", "config"}
        wait_for(lambda: counted() == (1, 1))

        for name, server, check in (("redis", stack.redis, "redis"), ("nats", stack.nats, "nats")):
            port, pid = server.port, server.proc.pid
            os.kill(pid, signal.SIGKILL)
            for url in (edge_health, ui_health):
                status, body = wait_for(lambda u=url: (h := _health(u))[0] == 503 and h, timeout=3.5)
                assert body["status"] == "degraded" and body["checks"][check]["ok"] is False, body
            # down: a route without limits is still served, from the edge's plan (docs/routing.md "Plans");
            # its usage event waits for NATS (or spills) and is counted below once NATS is back
            chat()
            wait_for(lambda: _health(edge_health)[0] == _health(ui_health)[0] == 200, timeout=20)
            assert server.port == port and server.proc.pid != pid  # restarted on the same port
            chat()  # the services reconnected by themselves
            wait_for(lambda: counted() == (served, served))  # the stream and the windows kept everything
            # the runner saw it go down and come back (it polls the health endpoints every second)
            wait_for(lambda check=check: [(c.name, c.ok) for c in stack.health_changes if c.name == check][-2:]
                     == [(check, False), (check, True)], timeout=5)
            assert f"{name} | killed by SIGKILL; restarting in 4s on the same port ({port})" in \
                   (tmp_path / "stack.log").read_text()
        said = (tmp_path / "stack.log").read_text()
        assert "health | redis DOWN: ConnectionError" in said
        # one line per group of checks that changed together; how they group depends on poll timing
        down = [line.split("health | ", 1)[1] for line in said.splitlines() if "health | " in line and " DOWN: " in line]
        named = {name.strip() for line in down for name in line.split(" DOWN: ")[0].split(",")}
        assert {"nats", "jetstream", "router", "usage", "pricing", "clickhouse"} <= named, down
        assert any(line.startswith("nats") and ": reconnecting" in line for line in down), down


def test_jetstream_readiness_is_nats_servers_own_healthz(tmp_path):
    """The runner waits on nats-server's monitoring endpoint, not on a hand-spoken NATS protocol."""
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    try:
        _wait_jetstream(server.url, timeout=20, server=server)
        status, body = _http_get(server.jetstream_healthz_url, 3)
        assert status == 200 and json.loads(body) == {"status": "ok"}
    finally:
        server.stop()
    with pytest.raises(InfraError, match="not ready after 0.5s"):  # nobody answers: the bound holds
        _wait_jetstream(server.url, timeout=0.5, server=server)


def test_stack_leaves_servers_the_user_gave_alone(infra, tmp_path):
    """NATS_URL / REDIS_URL: the user's servers; the stack neither starts nor supervises any."""
    env = dict(_own_servers_env(), NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url)
    stack = Stack(tmp_path / "llmgw.yaml", tmp_path / "state", env=env)
    assert stack.supervised() == [] and stack.nats is None and stack.redis is None


# ---- health: checks, cache, the runner's watch ------------------------------------------------------


async def test_health_monitor_caches_shares_a_round_and_bounds_each_check(monkeypatch):
    calls = {"fast": 0, "slow": 0}
    clock = [1000.0]  # the monitor's clock, moved by the test (the checks' timeouts run on the event loop's)
    monkeypatch.setattr(health, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))

    async def fast() -> str:
        calls["fast"] += 1
        return "fine"

    async def slow() -> str:
        calls["slow"] += 1
        await asyncio.sleep(5)
        return "never"

    async def broken() -> str:
        raise ConnectionError("refused")

    monitor = health.HealthMonitor([health.Check("fast", fast), health.Check("slow", slow, timeout_s=0.2),
                                    health.Check("extra", broken, required=False)], ttl_s=0.5)
    began = time.monotonic()
    reports = await asyncio.gather(*(monitor.report() for _ in range(5)))  # five polls at once: one round
    assert time.monotonic() - began < 1.0 and calls == {"fast": 1, "slow": 1}
    report = reports[0]
    assert all(r is report for r in reports)
    assert not report.ok and report.status_code == 503
    body = report.body()
    assert body["status"] == "degraded"
    fast_check = body["checks"]["fast"]
    assert fast_check == {"ok": True, "required": True, "detail": "fine", "ms": fast_check["ms"]}
    assert body["checks"]["slow"]["detail"] == "no answer within 0.2s"
    assert body["checks"]["extra"]["detail"] == "ConnectionError: refused"
    await monitor.report()
    assert calls["fast"] == 1  # cached
    clock[0] += 0.6  # past the 0.5 s the report is cached for
    await monitor.report()
    assert calls["fast"] == 2

    optional_only = health.HealthMonitor([health.Check("fast", fast), health.Check("extra", broken, required=False)])
    assert (await optional_only.report()).status_code == 200


class _FakeHealth:
    """A health endpoint whose checks a test sets; ``None``: it does not answer at all."""

    def __init__(self):
        self.checks: dict | None = {"redis": {"ok": True, "detail": "PONG"}}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if outer.checks is None:
                    self.close_connection = True
                    return
                ok = all(c["ok"] for c in outer.checks.values())
                body = json.dumps({"checks": outer.checks}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_health_watch_reports_changes_only():
    edge, ui = _FakeHealth(), _FakeHealth()
    ui.checks["clickhouse"] = {"ok": True, "detail": "fine"}
    changes = []
    watch = HealthWatch({"edge": edge.url, "ui-api": ui.url}, changes.extend)
    try:
        watch.poll(baseline=True)
        watch.poll()
        assert changes == []
        edge.checks["redis"] = {"ok": False, "detail": "ConnectionError: refused"}
        ui.checks["redis"] = {"ok": False, "detail": "ConnectionError: refused"}
        watch.poll()
        watch.poll()
        assert [(c.name, c.ok, c.detail, c.seen_by) for c in changes] == [
            ("redis", False, "ConnectionError: refused", ("edge", "ui-api"))]
        edge.checks["redis"] = ui.checks["redis"] = {"ok": True, "detail": "PONG"}
        edge.checks = None  # the edge stops answering; ui-api alone says Redis is back
        watch.poll()
        assert [(c.name, c.ok) for c in changes[1:]] == [("edge", False), ("redis", True)]
        assert changes[2].detail.startswith("after ")
    finally:
        edge.server.shutdown()
        ui.server.shutdown()
