"""``llmgw run`` as a user runs it: starter config, demo provider, a counted request, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from llmgw_cli.infra import free_port, port_is_free

pytestmark = pytest.mark.integration


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
    proc = subprocess.Popen([sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(config),
                             "--state-dir", str(state), "--edge-port", str(edge), "--ui-port", str(ui)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            output.append(line)
            if "gateway ready" in line or time.monotonic() > deadline:
                break
        assert "gateway ready" in "".join(output), "".join(output)
        assert "demo-chat" in config.read_text()  # the starter config was written

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{edge}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Echo: hi"

        def demo_requests() -> int:
            scopes = httpx.get(f"http://127.0.0.1:{ui}/api/usage/current").json()["scopes"]
            return sum(s["windows"]["minute"]["requests"] for s in scopes if s["scope"] == "provider")

        deadline = time.monotonic() + 20
        while demo_requests() < 1:
            assert time.monotonic() < deadline, "the request never showed up in /api/usage/current"
            time.sleep(0.2)

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
    time.sleep(0.1)
    assert port_is_free(port)

