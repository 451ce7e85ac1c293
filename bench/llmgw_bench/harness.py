"""What every benchmark shares: the demo provider and the gateway as child processes, the requests they
answer, the machine's description, the errors."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from llmgw_cli.infra import InfraError, wait_for_port
from llmgw_common.config import parse_config

DEFAULT_OUTPUT = "docs/benchmarks.md"
MODEL = "demo-chat"
GATEWAY_READY_TIMEOUT_S = 60
GATEWAY_STOP_GRACE_S = 30  # ``llmgw run`` stops its own children (NATS, Redis, services) on SIGTERM
RESULTS_START = "<!-- bench:results:start -->"
RESULTS_END = "<!-- bench:results:end -->"
ANTHROPIC_MODEL = "demo-claude"  # served by the demo provider's Anthropic face, through provider demo-anthropic
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words"}],
             "max_tokens": 16}
MESSAGES_BODY = {"model": ANTHROPIC_MODEL, "max_tokens": 16,
                 "messages": [{"role": "user", "content": "Say hello in five words"}]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}

DOCUMENT_HEAD = """# Benchmarks

`make bench` (or `python -m llmgw_bench --peers`) compares the gateway with LiteLLM's proxy and
Portkey's gateway in front of the same demo provider; `make bench PEERS=0` (or `python -m llmgw_bench
[--duration S] [--output FILE]`) measures what the gateway adds on top of its upstream. Both
drive the systems with `wrk` (`apt-get install wrk`). The sections below are rewritten by
every run.
"""


class BenchError(RuntimeError):
    pass


def machine_description() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = f" ({line.split(':', 1)[1].strip()})"
                break
    except OSError:
        pass
    wrk = _wrk_version()
    # a busy machine skews everything: say how busy it was
    load = f", load average {os.getloadavg()[0]:.2f} at the start" if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPUs{cpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}" + (f", {wrk}" if wrk else "") + load)


def _wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    first = out.splitlines()[0] if out else ""
    return first.split(" Copyright")[0].strip()


class ChildProcesses:
    """Processes we started, each in its own session, stopped in reverse order."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen, float]] = []

    def start(self, name: str, command: list[str], log_path: Path, stop_grace_s: float,
              cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            # own session: a Ctrl-C in the terminal reaches us only, and we stop them in order
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=cwd, env=env)
        self._children.append((name, proc, stop_grace_s))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop one of them, before the others."""
        for entry in list(self._children):
            if entry[1] is proc:
                self._children.remove(entry)
                self._stop(*entry)

    def stop_all(self) -> None:
        while self._children:
            self._stop(*self._children.pop())

    @staticmethod
    def _stop(name: str, proc: subprocess.Popen, grace: float) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(OSError):  # our output closed (piped to head): stop them all the same
            print(f"stopping {name} (pid {proc.pid})", flush=True)
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            # still running: kill its whole process group (it leads it: start_new_session)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the gateway exited with code {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise BenchError(f"{url} did not answer 200 within {timeout_s:g}s")


def check_answers(url: str, body: dict, headers: dict[str, str]) -> None:
    """One request before the load, so a broken gateway fails loudly instead of as a table of errors."""
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise BenchError(f"POST {url} failed: {exc}") from None
    try:
        answer = response.json()
        answered = response.status_code == 200 and bool(answer.get("choices") or answer.get("content"))
    except ValueError:
        answered = False
    if not answered:
        raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:500]}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_demo_provider(children: ChildProcesses, state_dir: Path, port: int) -> subprocess.Popen:
    """The upstream of a benchmark (no artificial delay), once it listens."""
    upstream = children.start(
        "demo provider",
        [sys.executable, "-m", "llmgw_demo_provider.main", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        state_dir / "demo-provider.log", stop_grace_s=5)
    try:
        wait_for_port("127.0.0.1", port, 15, upstream)
    except InfraError as exc:
        raise BenchError(f"the demo provider did not start: {exc}") from None
    return upstream


def write_gateway_config(path: Path, upstream_port: int, requests_per_minute: int | None = None,
                         leases: bool = False) -> None:
    """The gateway in front of the demo provider; ``requests_per_minute``: a limit on the benchmarked route
    (so every request is admitted against it), else none; ``leases``: ``routing.leases`` (the edge admits
    from capacity the router leases it)."""
    demo: dict = {
        "id": "demo",
        "type": "openai",
        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
        "free_tier": True,
        "models": [{"name": MODEL}],
    }
    if requests_per_minute is not None:
        demo["limits"] = {"requests_per_minute": requests_per_minute}
    data = {
        "version": 1,
        "providers": [demo, {
            "id": "demo-anthropic",
            "type": "anthropic",
            "base_url": f"http://127.0.0.1:{upstream_port}",
            "free_tier": True,
            "models": [{"name": ANTHROPIC_MODEL, "upstream": MODEL}],
        }],
    }
    data["routing"] = {"leases": leases}  # explicit: the row says which admission it measured, whatever the default
    parse_config(data, str(path))  # fail here, clearly, if the schema moved on
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


