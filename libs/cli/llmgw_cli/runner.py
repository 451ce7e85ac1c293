"""``llmgw run``: every service plus embedded infrastructure on one machine.

Each service is a child process running the same command a container runs
(``llmgw <service>``); its output is prefixed with its name. The runner
supervises everything it started: a service, nats-server or Redis that dies
is restarted with backoff — the servers on the same port with the same data
directory, so the JetStream file store and Redis's append-only file carry on
and the services' own reconnection finds them again. Servers the user gave
(``NATS_URL``, ``REDIS_URL``) are never touched. While it runs, the runner
polls the gateway's health endpoints and prints every dependency that goes
down or comes back. Ctrl-C (or SIGTERM) stops everything in order.
See docs/reliability.md.

The supervisor stays small (it runs as long as the gateway): it imports neither the config schema
(pydantic, yaml) nor a NATS or HTTP client library. The config is read and checked by a short-lived child
process (``read_config``), JetStream's readiness is nats-server's monitoring endpoint
(``/healthz?js-enabled-only=true``; for a NATS server the user gave, a child process with the NATS client
asks), and the health endpoints are read over a socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmgw_common.files import write_atomically

from .infra import InfraError, NatsServer, RedisServer, ServerProcess, die_with_parent, free_port, port_is_free
from .runtime import RUNTIME_FILE

SERVICES = ("pricing", "usage", "router", "edge", "ui-api")
_COLOURS = {"nats": 90, "redis": 90, "demo": 36, "pricing": 35, "usage": 34, "router": 33, "edge": 32, "ui-api": 96,
            "health": 91}

# Restarts: 0.5 s after the first death, doubling with every further death within a minute, at most 30 s.
RESTART_BASE_S = 0.5
RESTART_MAX_S = 30.0
RESTART_WINDOW_S = 60.0
TICK_S = 0.2  # how often the supervisor looks at its children
HEALTH_POLL_S = 1.0  # how often the health endpoints are polled (they cache their checks ~1 s)


def _say(name: str, line: str, out=None) -> None:
    out = out or sys.stdout
    colour = _COLOURS.get(service_of(name), 37) if out.isatty() else None
    prefix = f"\x1b[{colour}m{name:>8} |\x1b[0m " if colour else f"{name:>8} | "
    out.write(prefix + line.rstrip("\n") + "\n")
    out.flush()


def restart_delay(recent_deaths: int, base_s: float = RESTART_BASE_S) -> float:
    """Backoff before a restart, given how many times the child died within the last minute (this one incl.)."""
    return min(base_s * 2 ** max(0, recent_deaths - 1), RESTART_MAX_S)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "stopped"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    log: object = None  # file to write prefixed output to; None: stdout
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent deaths
    due: float | None = None  # when the pending restart is due

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
                                     preexec_fn=die_with_parent)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True, name=f"log-{self.name}").start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                _say(self.name, line, self.log)
            except ValueError:  # the stack closed its log file while this child said its last words
                return

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

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


@dataclass
class ServerChild:
    """An embedded server (nats-server, Redis) the runner started, supervised like a service: restarted on
    the same port with the same data directory."""

    name: str
    server: ServerProcess
    log: object = None
    restarts: list[float] = field(default_factory=list)
    due: float | None = None

    def start(self) -> None:
        if not port_is_free(self.server.port, self.server.host):
            raise InfraError(f"port {self.server.port} is taken by another process")
        try:
            self.server.start()
        except BaseException:
            self.server.kill()  # started but never listened: do not leave it half alive
            raise

    @property
    def pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.server.proc.poll() if self.server.proc is not None else None

    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None


class ConfigProblem(InfraError):
    """The config file does not load; the message is ``ConfigError``'s text."""


# What the runner needs of the config, read by a child process: the schema (pydantic, yaml) costs the
# long-lived supervisor ~20 MB that it would never use again.
_READ_CONFIG = """
import json, sys
from llmgw_common.config import ConfigError, load_config
try:
    config = load_config(sys.argv[1])
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
print(json.dumps({"demo": {"enabled": config.demo.enabled, "host": config.demo.host, "port": config.demo.port}}))
"""


def read_config(path: Path) -> dict:
    """The parts of the config the runner uses (``{"demo": {"enabled", "host", "port"}}``), from a child
    process that loads and checks it; ``ConfigProblem`` (``ConfigError``'s text) when it does not load."""
    done = subprocess.run([sys.executable, "-c", _READ_CONFIG, str(path)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ConfigProblem(done.stderr.strip() or f"reading {path} failed ({describe_exit(done.returncode)})")
    return json.loads(done.stdout)


# ``admin_auth.ensure_admin_token`` in a child process too (hashlib, hmac, secrets: ~6 MB in the supervisor)
_ADMIN_TOKEN = """
import sys
from llmgw_common.admin_auth import AdminTokenError, ensure_admin_token, token_path
try:
    token, created = ensure_admin_token(sys.argv[1])
except AdminTokenError as exc:
    sys.exit(str(exc))
if created:
    print(f"admin API token (shown once; kept in {token_path(sys.argv[1])}): {token}", flush=True)
"""


def migrate(cli: list[str], env: dict[str, str], log=None) -> None:
    """The ClickHouse migrations, by the same command as compose's job and the Kubernetes Job
    (``llmgw migrate``), before any service starts: the usage service never migrates, it waits for them."""
    done = subprocess.run([*cli, "migrate"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [describe_exit(done.returncode)]
        raise InfraError(f"llmgw migrate failed: {tail[0]}")
    _say("migrate", done.stdout.strip(), log)


def ensure_admin_token(state_dir: Path) -> None:
    """The admin API's token: generated on the first start and printed this once (``admin_auth``)."""
    done = subprocess.run([sys.executable, "-c", _ADMIN_TOKEN, str(state_dir)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise InfraError(done.stderr.strip() or f"the admin token: {describe_exit(done.returncode)}")
    if done.stdout:
        print(done.stdout, end="", flush=True)


# A NATS server the user gave (TLS, credentials, several URLs) is asked with the NATS client, in a child
# process (the client library and asyncio cost the supervisor ~25 MB).
_WAIT_JETSTREAM = """
import asyncio, sys, time
import nats

async def probe(url, timeout):
    deadline = time.monotonic() + timeout
    nodes = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: every node its own server
    nc = await nats.connect(nodes, connect_timeout=2, max_reconnect_attempts=5)
    try:
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    sys.exit(f"JetStream at {url} not ready after {timeout}s")
                await asyncio.sleep(0.1)
    finally:
        await nc.close()

asyncio.run(probe(sys.argv[1], float(sys.argv[2])))
"""


def _wait_jetstream(url: str, timeout: float = 20.0, server: NatsServer | None = None) -> None:
    """The port opens before JetStream answers; services need JetStream at once."""
    if server is None:
        done = subprocess.run([sys.executable, "-c", _WAIT_JETSTREAM, url, str(timeout)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise InfraError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                             else f"JetStream at {url} not ready after {timeout}s")
        return
    deadline = time.monotonic() + timeout
    while not _http_ok(server.jetstream_healthz_url):
        if time.monotonic() > deadline:
            raise InfraError(f"JetStream at {url} not ready after {timeout}s")
        time.sleep(0.1)


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET a local health endpoint (``http://host:port/path``) over a socket, HTTP/1.0: (status, body)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
        s.sendall(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP response from {url}") from None


def _http_ok(url: str) -> bool:
    try:
        return _http_get(url, 3)[0] == 200
    except OSError:
        return False


def _health_of(url: str, timeout: float = 5.0) -> dict[str, tuple[bool, str]] | None:
    """The checks a health endpoint reports (name -> (ok, detail)); None when it does not answer."""
    try:
        _status, body = _http_get(url, timeout)  # 503: the body still lists the checks
    except OSError:
        return None
    try:
        checks = json.loads(body).get("checks", {})
        return {name: (bool(c.get("ok")), str(c.get("detail", ""))) for name, c in checks.items()}
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class HealthChange:
    at: float  # time.monotonic()
    name: str  # a dependency ("redis", "nats", "clickhouse", ...) or a front end ("edge", "ui-api")
    ok: bool
    detail: str = ""  # why it is down, or how long it was down
    seen_by: tuple[str, ...] = ()  # the front ends that said it was down


class HealthWatch:
    """Polls the edge's ``/healthz`` and ui-api's ``/api/health`` and reports every dependency state change.

    A dependency is down when any front end that answered says so; a front end that does not answer at
    all is itself down. The first poll only sets the baseline (the runner started everything healthy).
    """

    def __init__(self, endpoints: dict[str, str], on_changes, interval: float = HEALTH_POLL_S):
        self.endpoints = endpoints  # front end name -> health URL
        self.on_changes = on_changes  # called with the changes one poll found (never with none)
        self.interval = interval
        self.state: dict[str, bool] = {}
        self._since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-watch")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            began = time.monotonic()
            self.poll(baseline=first)
            first = False
            self._stop.wait(max(0.1, self.interval - (time.monotonic() - began)))

    def poll(self, baseline: bool = False) -> None:
        found: dict[str, tuple[bool, str, list[str]]] = {}  # name -> (ok, detail, front ends saying it is down)
        for front, url in self.endpoints.items():
            checks = _health_of(url)
            found[front] = (checks is not None, "not answering", [])
            for name, (ok, detail) in (checks or {}).items():
                was_ok, was_detail, who = found.get(name, (True, "", []))
                found[name] = (was_ok and ok, was_detail if not was_ok else detail, who + ([] if ok else [front]))
        # a dependency only a silent front end reports keeps its last state
        if self._stop.is_set():
            return
        now = time.monotonic()
        changes = []
        for name, (ok, detail, who) in found.items():
            before = self.state.get(name)
            self.state[name] = ok
            if before == ok:
                continue
            lasted = now - self._since.get(name, now)
            self._since[name] = now
            if baseline or (before is None and ok):
                continue
            changes.append(HealthChange(now, name, ok, detail if not ok else f"after {lasted:.1f}s", tuple(who)))
        if changes:
            self.on_changes(changes)


class Stack:
    def __init__(self, config_path: Path, state_dir: Path, edge_port: int = 8080, ui_port: int = 8081,
                 host: str = "127.0.0.1", env: dict[str, str] | None = None, log_file: Path | None = None,
                 restart_base_s: float = RESTART_BASE_S, replicas: dict[str, int] | None = None):
        self.config_path = config_path.resolve()
        self.replicas = check_replicas(replicas or {}, env if env is not None else os.environ)
        self.state_dir = state_dir.resolve()
        self.edge_port = edge_port
        self.ui_port = ui_port
        self.host = host
        self.restart_base_s = restart_base_s  # the first restart's delay (tests lengthen it to watch an outage)
        self.base_env = dict(os.environ if env is None else env)
        self.nats: NatsServer | None = None
        self.redis: RedisServer | None = None
        self.servers: list[ServerChild] = []  # only the servers this stack started
        self.children: list[Child] = []
        self.health_changes: list[HealthChange] = []
        self.restart_log: list[tuple[float, str, str]] = []  # (monotonic time, child, "died" | "started")
        self._stopping = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # held while (re)starting a child: stop() waits for it
        self._watch: HealthWatch | None = None
        self.log = open(log_file, "a", buffering=1) if log_file else None

    def start(self, ready_timeout: float = 60.0) -> None:
        config = read_config(self.config_path)
        for what, port in (("gateway", self.edge_port), ("admin API", self.ui_port)):
            if not port_is_free(port, self.host):
                raise InfraError(f"port {port} for the {what} is already in use; choose another "
                                 f"(--edge-port / --ui-port)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        nats_url = self.base_env.get("NATS_URL", "")
        if not nats_url:
            self.nats = NatsServer(self.state_dir / "nats", port=free_port(), log_file=self.state_dir / "nats.log")
            self.servers.append(ServerChild("nats", self.nats, self.log))
            self.nats.start()
            nats_url = self.nats.url
            _say("nats", f"nats-server with JetStream on {nats_url} (data in {self.nats.data_dir}; supervised)",
                 self.log)
        _wait_jetstream(nats_url, server=self.nats)
        redis_url = self.base_env.get("REDIS_URL", "")
        if not redis_url:
            self.redis = RedisServer(self.state_dir / "redis", port=free_port(), persist=True,
                                     log_file=self.state_dir / "redis.log")
            self.servers.append(ServerChild("redis", self.redis, self.log))
            self.redis.start()
            redis_url = self.redis.url
            _say("redis", f"redis on {redis_url} (data in {self.redis.data_dir}, append-only file; supervised)",
                 self.log)
        env = dict(self.base_env, NATS_URL=nats_url, REDIS_URL=redis_url, LLMGW_CONFIG=str(self.config_path),
                   LLMGW_STATE_DIR=str(self.state_dir), LLMGW_EDGE_PORT=str(self.edge_port),
                   LLMGW_UI_PORT=str(self.ui_port), LLMGW_EDGE_HOST=self.host, LLMGW_UI_HOST=self.host,
                   PYTHONUNBUFFERED="1")
        self._write_runtime(nats_url, redis_url)
        cli = [sys.executable, "-m", "llmgw_cli.main"]
        migrate(cli, env, self.log)
        demo = config["demo"]
        if demo["enabled"]:
            self.children.append(Child("demo", cli + ["demo-provider", "--host", demo["host"],
                                                      "--port", str(demo["port"])], env, self.log))
        for name in SERVICES:
            n = self.replicas.get(name, 1)
            if n == 1:
                self.children.append(Child(name, cli + [name], env, self.log))
                continue
            for i in range(1, n + 1):  # each its own replica id (spill files, logs); edges share the port
                replica_env = dict(env, LLMGW_REPLICA_ID=f"{name}-{i}")
                if name == "edge":
                    replica_env["LLMGW_EDGE_REUSE_PORT"] = "1"
                if name == "usage":  # its insert journal is locked by one process: a state dir each
                    replica_env["LLMGW_STATE_DIR"] = str(self.state_dir / f"usage-{i}")
                self.children.append(Child(f"{name}-{i}", cli + [name], replica_env, self.log))
        for child in self.children:
            child.start()
        self._wait_ready(ready_timeout)

    def _write_runtime(self, nats_url: str, redis_url: str) -> None:
        """Where this run's servers are, for the CLI's other commands (`llmgw keys`, `llmgw replay`...):
        ``<state dir>/runtime.json``, private to the user (no secrets in it, but no need to share it)."""
        write_atomically(self.state_dir / RUNTIME_FILE, json.dumps({
            "nats_url": nats_url, "redis_url": redis_url, "edge": f"http://{self.host}:{self.edge_port}",
            "admin": f"http://{self.host}:{self.ui_port}", "pid": os.getpid()}), mode=0o600)

    def _remove_runtime(self) -> None:
        path = self.state_dir / RUNTIME_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():  # ours, not a newer run's
                path.unlink()
        except (OSError, ValueError):
            pass

    @property
    def health_urls(self) -> dict[str, str]:
        return {"edge": f"http://{self.host}:{self.edge_port}/healthz",
                "ui-api": f"http://{self.host}:{self.ui_port}/api/health"}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(_http_ok(u) for u in self.health_urls.values()):
            for child in self.children:
                if not child.alive():
                    raise InfraError(f"{child.name} exited with {child.proc.returncode} during start-up")
            if time.monotonic() > deadline:
                raise InfraError(f"the gateway was not ready after {timeout}s")
            time.sleep(0.2)

    def child(self, name: str) -> Child | ServerChild:
        return next(c for c in self.supervised() if c.name == name)

    def supervised(self) -> list[Child | ServerChild]:
        """Everything this stack restarts, servers first (the services need them)."""
        return [*self.servers, *self.children]

    # ---- supervision ------------------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart whatever dies, with backoff, and report health changes, until ``stop``."""
        self._watch = HealthWatch(self.health_urls, self._on_health_changes)
        self._watch.start()
        while not self._stopping:
            self.supervise_once()
            time.sleep(TICK_S)

    def supervise_in_background(self) -> threading.Thread:
        """``supervise`` on a thread of its own (tests). The thread lives until ``stop`` has finished: a
        child gets SIGTERM when the *thread* that started it ends (PR_SET_PDEATHSIG), and a restarted
        nats-server must not go down before the services it serves have stopped."""

        def run() -> None:
            self.supervise()
            self._stopped.wait()

        thread = threading.Thread(target=run, daemon=True, name="supervisor")
        thread.start()
        return thread

    def supervise_once(self) -> None:
        for child in self.supervised():
            with self._lock:
                if self._stopping:
                    return
                if child.alive():
                    continue
                now = time.monotonic()
                if child.due is None:  # just found dead
                    child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
                    delay = restart_delay(len(child.restarts), self.restart_base_s)
                    child.due = now + delay
                    self.restart_log.append((now, child.name, "died"))
                    server = isinstance(child, ServerChild)
                    where = f" on the same port ({child.server.port}) and data" if server else ""
                    _say(child.name, f"{describe_exit(child.returncode)}; restarting in {delay:g}s{where}", self.log)
                    continue
                if now < child.due:
                    continue
                child.due = None
                try:
                    child.start()
                except (InfraError, OSError) as exc:
                    _say(child.name, f"restart failed: {exc}", self.log)  # found dead again next tick: backoff
                    continue
                self.restart_log.append((time.monotonic(), child.name, "started"))
                _say(child.name, f"restarted (pid {child.pid})", self.log)

    def _on_health_changes(self, changes: list[HealthChange]) -> None:
        """One line per kind of change: NATS going away takes every check made over NATS with it."""
        self.health_changes += changes
        lines: dict[tuple[bool, str], list[HealthChange]] = {}
        for c in changes:
            lines.setdefault((c.ok, c.detail), []).append(c)
        for (ok, detail), same in lines.items():
            seen_by = sorted({front for c in same for front in c.seen_by})
            text = f"{', '.join(c.name for c in same)} {'up' if ok else 'DOWN'}" + (f": {detail}" if detail else "")
            _say("health", text + (f" (seen by {', '.join(seen_by)})" if seen_by else ""), self.log)

    def stop(self) -> None:
        """Stop everything, the front first; the runtime file goes first of all (the CLI must not dial a NATS
        on its way out). Once: a second call returns at once."""
        if self._stopping:
            return
        self._stopping = True
        self._remove_runtime()
        with self._lock:  # a restart in progress finishes first; nothing starts after this
            pass
        if self._watch is not None:
            self._watch.stop()
        # the front first, so nothing new arrives while the back ends drain; every child belongs to a group
        # (a replica by its service: edge-2 with edge), and whatever is left over goes last
        groups = (("edge", "ui-api", "demo"), ("router", "pricing"), ("usage",))
        stages = [[c for c in self.children if service_of(c.name) in group] for group in groups]
        stages.append([c for c in self.children if not any(c in stage for stage in stages)])
        for members in stages:
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
        self._stopped.set()


def service_of(child: str) -> str:
    """The service a child runs: ``router-2`` -> ``router``; ``ui-api`` stays ``ui-api``."""
    base, _, n = child.rpartition("-")
    return base if base and n.isdigit() else child


def parse_replicas(text: str) -> dict[str, int]:
    """``edge=2,router=2`` -> {"edge": 2, "router": 2}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        if not sep or name.strip() not in SERVICES or not count.strip().isdigit() or int(count) < 1:
            raise InfraError(f"--replicas takes service=count pairs (services: {', '.join(SERVICES)}), "
                             f"not {part!r}")
        out[name.strip()] = int(count)
    return out


def check_replicas(replicas: dict[str, int], env) -> dict[str, int]:
    if replicas.get("ui-api", 1) != 1:
        raise InfraError("ui-api runs once here: its replicas need a proxy in front, which compose and "
                         "Kubernetes have (they run 2; sessions and the config are shared in NATS)")
    if replicas.get("usage", 1) > 1 and not env.get("CLICKHOUSE_URL"):
        raise InfraError("several usage replicas need a ClickHouse server (CLICKHOUSE_URL): the in-process "
                         "ClickHouse (chDB) data directory belongs to one process")
    if replicas.get("edge", 1) > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise InfraError("edge replicas share their port with SO_REUSEPORT, which this system lacks")
    from llmgw_common.config import ConfigError
    from llmgw_common.jetstream import replicas_setting

    try:  # every service reads it: one clear line now rather than each child's error at start-up
        replicas_setting(env)
    except ConfigError as exc:
        raise InfraError("; ".join(f"{path}: {problem}" for path, problem in exc.problems)) from None
    return replicas


class StopSignals:
    """SIGINT and SIGTERM stop the stack, once. The first raises ``KeyboardInterrupt`` in the main thread,
    which cuts start-up or supervision short; any later one is ignored, so the orderly stop runs to its
    end: ``make run`` stopped by a process-group SIGTERM sends a second one (make forwards it), and an
    impatient user presses Ctrl-C twice."""

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum, _frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt


def run_stack(config_path: Path, state_dir: Path, edge_port: int, ui_port: int, host: str,
              replicas: dict[str, int] | None = None) -> int:
    try:
        stack = Stack(config_path, state_dir, edge_port, ui_port, host, replicas=replicas)
    except InfraError as exc:
        _say("llmgw", f"error: {exc}", sys.stderr)
        return 2

    signals = StopSignals()
    signals.install()
    code = 0
    try:
        try:
            # the admin API's credential: made on the first start, shown this once (ui-api logs only where it is)
            ensure_admin_token(state_dir.resolve())
            stack.start()
            _say("llmgw", f"gateway ready: OpenAI-compatible API on http://{host}:{edge_port}/v1, "
                          f"admin API on http://{host}:{ui_port} (Ctrl-C stops)")
            stack.supervise()
        except InfraError as exc:
            signals.stopping = True
            _say("llmgw", f"error: {exc}", sys.stderr)
            code = 1
    except KeyboardInterrupt:  # the first SIGINT / SIGTERM (StopSignals), also one that came during the above
        pass
    finally:
        signals.stopping = True
        _say("llmgw", "stopping...")
        stack.stop()
    _say("llmgw", "stopped")
    return code
