"""``llmgw run``: every service plus embedded infrastructure on one machine.

Each service is a child process running the same command a container runs
(``llmgw <service>``); its output is prefixed with its name. A service that
dies is restarted with backoff. Ctrl-C (or SIGTERM) stops everything in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmgw_common.config import load_config

from .infra import InfraError, NatsServer, RedisServer, die_with_parent, free_port, port_is_free

SERVICES = ("pricing", "usage", "router", "edge", "ui-api")
_COLOURS = {"nats": 90, "redis": 90, "demo": 36, "pricing": 35, "usage": 34, "router": 33, "edge": 32, "ui-api": 96}


def _say(name: str, line: str, out=None) -> None:
    out = out or sys.stdout
    colour = _COLOURS.get(name, 37) if out.isatty() else None
    prefix = f"\x1b[{colour}m{name:>8} |\x1b[0m " if colour else f"{name:>8} | "
    out.write(prefix + line.rstrip("\n") + "\n")
    out.flush()


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    log: object = None  # file to write prefixed output to; None: stdout
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
                                     preexec_fn=die_with_parent)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True, name=f"log-{self.name}").start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            _say(self.name, line, self.log)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_jetstream(url: str, timeout: float = 20.0) -> None:
    """The port opens before JetStream answers; services need JetStream at once."""
    import nats

    async def probe() -> None:
        deadline = time.monotonic() + timeout
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=5)
        try:
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise InfraError(f"JetStream at {url} not ready after {timeout}s")
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    asyncio.run(probe())


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Stack:
    def __init__(self, config_path: Path, state_dir: Path, edge_port: int = 8080, ui_port: int = 8081,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None, log_file: Path | None = None):
        self.config_path = config_path.resolve()
        self.state_dir = state_dir.resolve()
        self.edge_port = edge_port
        self.ui_port = ui_port
        self.host = host
        self.base_env = dict(os.environ if env is None else env)
        self.nats: NatsServer | None = None
        self.redis: RedisServer | None = None
        self.children: list[Child] = []
        self._stopping = False
        self.log = open(log_file, "a", buffering=1) if log_file else None

    def start(self, ready_timeout: float = 60.0) -> None:
        config = load_config(self.config_path)
        for what, port in (("gateway", self.edge_port), ("admin API", self.ui_port)):
            if not port_is_free(port, self.host):
                raise InfraError(f"port {port} for the {what} is already in use; choose another "
                                 f"(--edge-port / --ui-port)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        nats_url = self.base_env.get("NATS_URL", "")
        if not nats_url:
            self.nats = NatsServer(self.state_dir / "nats", port=free_port(), log_file=self.state_dir / "nats.log")
            self.nats.start()
            nats_url = self.nats.url
            _say("nats", f"nats-server with JetStream on {nats_url} (data in {self.nats.data_dir})", self.log)
        _wait_jetstream(nats_url)
        redis_url = self.base_env.get("REDIS_URL", "")
        if not redis_url:
            self.redis = RedisServer(self.state_dir / "redis", port=free_port(), persist=True,
                                     log_file=self.state_dir / "redis.log")
            self.redis.start()
            redis_url = self.redis.url
            _say("redis", f"redis on {redis_url} (data in {self.redis.data_dir})", self.log)
        env = dict(self.base_env, NATS_URL=nats_url, REDIS_URL=redis_url, LLMGW_CONFIG=str(self.config_path),
                   LLMGW_STATE_DIR=str(self.state_dir), LLMGW_EDGE_PORT=str(self.edge_port),
                   LLMGW_UI_PORT=str(self.ui_port), LLMGW_EDGE_HOST=self.host, LLMGW_UI_HOST=self.host,
                   PYTHONUNBUFFERED="1")
        cli = [sys.executable, "-m", "llmgw_cli.main"]
        if config.demo.enabled:
            self.children.append(Child("demo", cli + ["demo-provider", "--host", config.demo.host,
                                                      "--port", str(config.demo.port)], env, self.log))
        for name in SERVICES:
            self.children.append(Child(name, cli + [name], env, self.log))
        for child in self.children:
            child.start()
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        urls = [f"http://{self.host}:{self.edge_port}/healthz", f"http://{self.host}:{self.ui_port}/api/health"]
        while not all(_http_ok(u) for u in urls):
            for child in self.children:
                if not child.alive():
                    raise InfraError(f"{child.name} exited with {child.proc.returncode} during start-up")
            if time.monotonic() > deadline:
                raise InfraError(f"the gateway was not ready after {timeout}s")
            time.sleep(0.2)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def supervise(self) -> None:
        """Restart services that die, with backoff, until ``stop``."""
        while not self._stopping:
            for child in self.children:
                if self._stopping or child.alive():
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                delay = min(2 ** (len(child.restarts) - 1), 30)
                _say(child.name, f"exited with {child.proc.returncode}; restarting in {delay}s", self.log)
                time.sleep(delay)
                if not self._stopping:
                    child.start()
            time.sleep(0.5)

    def stop(self) -> None:
        self._stopping = True
        # the front first, so nothing new arrives while the back ends drain
        for group in (("edge", "ui-api", "demo"), ("router", "pricing"), ("usage",)):
            members = [c for c in self.children if c.name in group]
            for c in members:
                c.terminate()
            deadline = time.monotonic() + 15
            for c in members:
                c.wait_or_kill(deadline)
        for server in (self.redis, self.nats):
            if server is not None:
                server.stop()
        if self.log:
            self.log.close()


def run_stack(config_path: Path, state_dir: Path, edge_port: int, ui_port: int, host: str) -> int:
    stack = Stack(config_path, state_dir, edge_port, ui_port, host)

    def on_term(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        stack.start()
        _say("llmgw", f"gateway ready: OpenAI-compatible API on http://{host}:{edge_port}/v1, "
                      f"admin API on http://{host}:{ui_port} (Ctrl-C stops)")
        stack.supervise()
    except KeyboardInterrupt:
        _say("llmgw", "stopping...")
    except InfraError as exc:
        _say("llmgw", f"error: {exc}", sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the orderly stop short
        stack.stop()
    _say("llmgw", "stopped")
    return code
