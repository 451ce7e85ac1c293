"""Helpers for tests that run the whole gateway: a stack of real service processes, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

from llmgw_cli.infra import free_port
from llmgw_cli.runner import Stack


def delete_config_bucket(nats_url: str) -> None:
    """Forget the config bucket a shared test NATS kept from an earlier test: the next gateway started
    is seeded from its own config file, as on a NATS of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from llmgw_common.config_bucket import CONFIG_BUCKET
    from llmgw_common.nats_conn import connect_nats

    async def delete() -> None:
        from nats.js.errors import NotFoundError

        nc = await connect_nats(nats_url, "test-config-reset")
        try:
            await nc.jetstream().delete_key_value(CONFIG_BUCKET)
        except NotFoundError:
            pass
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:  # its own event loop, whether or not the caller runs one
        pool.submit(asyncio.run, delete()).result()


async def push_config(nats_url: str, text: str) -> int:
    """The text as a new revision of the config bucket (what ``llmgw config push`` stores, without its
    checks: an invalid text reaches the services too); its revision."""
    from llmgw_common import config_bucket
    from llmgw_common.nats_conn import connect_nats

    nc = await connect_nats(nats_url, "test-config-push")
    try:
        kv = await config_bucket.open_bucket(nc.jetstream())
        return await kv.put(config_bucket.CONFIG_KEY, text.encode())
    finally:
        await nc.close()


@contextlib.contextmanager
def running_stack(root: Path, config_text: str, env: dict[str, str], replicas: dict[str, int] | None = None):
    """Every service as a child process (what ``llmgw run`` starts) against the test's NATS and Redis,
    seeded from ``config_text``."""
    if env.get("REDIS_URL", "").startswith("redis://"):  # a Sentinel set or a cluster of the test's own is new
        clear_failed_auth(env["REDIS_URL"])
    config = root / "llmgw.yaml"
    config.write_text(config_text)
    if env.get("NATS_URL"):
        delete_config_bucket(env["NATS_URL"])
    stack = Stack(config, root / "state", edge_port=free_port(), ui_port=free_port(), env=env,
                  log_file=root / "stack.log", replicas=replicas)
    try:
        stack.start(ready_timeout=90)
    except Exception:
        print((root / "stack.log").read_text())
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(fn, timeout=20.0, interval=0.2):
    """Poll until ``fn`` returns a truthy value (eventual consistency, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


async def wait_until(fn, timeout=20.0, interval=0.05):
    """``wait_for`` for async tests: polls without blocking the event loop (in-process services run on it);
    ``fn`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


async def service_replies(nc, verb: str, name: str, count: int, timeout: float = 15.0) -> list[dict]:
    """The replies of ``count`` instances of the NATS micro service ``name`` to ``$SRV.<verb>.<name>`` (PING,
    INFO, STATS), as soon as that many answered one request; asked again until ``timeout``."""
    import json

    from nats.errors import TimeoutError as NatsTimeoutError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.{verb}.{name}", b"", reply=inbox)
        replies: list[dict] = []
        try:
            while len(replies) < count:
                msg = await sub.next_msg(timeout=0.5)
                if not msg.data:  # the server's "no responders" (status 503): none of them is up yet
                    break
                replies.append(json.loads(msg.data))
        except NatsTimeoutError:  # fewer answered this round
            pass
        finally:
            await sub.unsubscribe()
        if len(replies) >= count:
            return replies
        if loop.time() > deadline:
            raise AssertionError(f"{len(replies)} of {count} {name} services answered $SRV.{verb} in {timeout}s")


async def wait_service(nc, name: str, count: int = 1, timeout: float = 15.0, endpoint: str | None = None) -> None:
    """Until ``count`` instances of the NATS micro service ``name`` answer, each with ``endpoint`` among its
    endpoints when one is given (subscribed: it takes requests)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        infos = await service_replies(nc, "INFO", name, count, max(0.1, deadline - loop.time()))
        if endpoint is None or all(endpoint in {e["name"] for e in i.get("endpoints") or []} for i in infos):
            return
        if loop.time() > deadline:
            raise AssertionError(f"{name}: no {endpoint} endpoint on {count} instances in {timeout}s")
        await asyncio.sleep(0.05)


def clear_router_health(redis_url: str) -> None:
    """Cooldowns, breakers and the pin are shared state in Redis: each test starts healthy."""
    import redis

    from llmgw_common import redis_keys as k

    r = redis.Redis.from_url(redis_url)
    for pattern in (k.COOLDOWN_PREFIX + "*", k.BREAKER_PREFIX + "*", k.PROBE_PREFIX + "*", k.FAILURES_PREFIX + "*",
                    k.PIN, k.SMART):
        for key in r.scan_iter(pattern):
            r.delete(key)
    r.close()


def clear_failed_auth(redis_url: str) -> None:
    """Failed credential checks are counted per address in Redis, shared by every gateway on it: every test
    client is 127.0.0.1, so a stack starts without the blocks an earlier test's guessing left there."""
    import redis

    from llmgw_common import redis_keys as k

    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(k.AUTH_FAILURES_PREFIX + "*"):
        r.delete(key)
    r.close()


# ---- supervised stacks and the runner as a process (fault injection) ----------------------------------


@contextlib.contextmanager
def supervised_stack(root: Path, config_text: str, env: dict[str, str], state_dir: Path | None = None,
                     edge_port: int | None = None, ui_port: int | None = None, **stack_options):
    """Like ``running_stack``, with the supervision ``llmgw run`` does (restarts with backoff, health
    changes recorded in ``stack.health_changes``). Leave NATS_URL / REDIS_URL out of ``env`` to have the
    stack start — and supervise — its own nats-server and Redis."""
    config = root / "llmgw.yaml"
    config.write_text(config_text)
    if env.get("NATS_URL"):
        delete_config_bucket(env["NATS_URL"])
    stack = Stack(config, state_dir or root / "state", edge_port=edge_port or free_port(),
                  ui_port=ui_port or free_port(), env=env, log_file=root / "stack.log", **stack_options)
    try:
        stack.start(ready_timeout=90)
    except Exception:
        stack.stop()
        print((root / "stack.log").read_text())
        raise
    stack.supervise_in_background()
    try:
        yield stack
    finally:
        stack.stop()


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        try:
            cmd = (Path("/proc") / str(p) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        out.append((p, cmd))
        todo += children.get(p, [])
    return out


class RunnerProcess:
    """``llmgw run`` as a real process (what a user starts), its output in ``log``; can be killed -9."""

    def __init__(self, config: Path, state_dir: Path, edge_port: int, ui_port: int, env: dict[str, str],
                 log: Path, args: tuple[str, ...] = ()):
        self.config, self.state_dir, self.edge_port, self.ui_port = config, state_dir, edge_port, ui_port
        self.args = args  # more ``llmgw run`` options (``--replicas router=2``)
        self.env = {k: v for k, v in env.items() if k not in ("NATS_URL", "REDIS_URL")}
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 90.0) -> RunnerProcess:
        import sys

        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(self.config), "--state-dir",
                 str(self.state_dir), "--edge-port", str(self.edge_port), "--ui-port", str(self.ui_port),
                 *self.args],
                env=dict(self.env, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=ctrl_c_stops)
        deadline = time.monotonic() + ready_timeout
        while "gateway ready" not in self.output(offset):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llmgw run not ready:\n{self.output(offset)}")
            time.sleep(0.2)
        return self

    def output(self, offset: int = 0) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace") if self.log.exists() else ""

    def children(self) -> dict[str, int]:
        """name -> pid of what the runner runs: nats, redis and the services."""
        found = {}
        for pid, cmd in descendants(self.proc.pid):
            if "nats-server" in cmd:
                found["nats"] = pid
            elif "redis-server" in cmd or "valkey" in cmd:
                found["redis"] = pid
            elif "llmgw_cli.main" in cmd:
                found[cmd.split("llmgw_cli.main", 1)[1].split()[0]] = pid
        return found

    def pids(self, name: str) -> list[int]:
        """Every process of one part (``router``: each replica; ``nats``, ``redis``)."""
        marks = {"nats": ("nats-server",), "redis": ("redis-server", "valkey")}.get(name)
        return [pid for pid, cmd in descendants(self.proc.pid)
                if (any(m in cmd for m in marks) if marks else
                    "llmgw_cli.main" in cmd and cmd.split("llmgw_cli.main", 1)[1].split()[0] == name)]

    def kill_all(self) -> None:
        """kill -9 the runner and every process below it at once (a crash: nobody stops cleanly)."""
        victims = [pid for pid, _ in descendants(self.proc.pid)]
        os.kill(self.proc.pid, signal.SIGSTOP)  # the runner must not react to its children dying
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        """Ctrl-C (SIGINT), as a user stops it; kill -9 whatever is left after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()


def ctrl_c_stops() -> None:
    """In a child before it runs: SIGINT stops it, as Ctrl-C in a terminal does. A test session started in
    the background (``cmd &`` in a script) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def files_under(root: Path) -> Iterator[Path]:
    """Every file below ``root`` of a running stack: directories it removes while we walk (chDB's temporary
    inserts) are skipped, where ``Path.rglob`` raises."""
    for folder, _dirs, names in os.walk(root):
        for name in names:
            yield Path(folder) / name
