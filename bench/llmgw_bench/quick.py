"""``llmgw bench`` (``make bench``): what the gateway costs, measured against its upstream called directly.

Starts the demo provider (zero delay; it speaks OpenAI and Anthropic) and a
whole gateway (``llmgw run``) in front of it, then drives both with ``wrk`` at
concurrency 1 and 10 in the same session: OpenAI chat passed through to an
OpenAI upstream, Anthropic messages passed through to an Anthropic upstream,
and OpenAI chat translated for the Anthropic upstream, each beside the
upstream called directly. Writes the table to docs/benchmarks.md. Every
process it starts is stopped again, on error and on Ctrl-C too.

With ``--peers`` (what ``make bench`` runs) it compares the gateway with LiteLLM's proxy and
Portkey's gateway instead: see bench_peers.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from llmgw_cli.infra import InfraError, free_port, wait_for_port
from llmgw_common.config import parse_config

DEFAULT_OUTPUT = "docs/benchmarks.md"
MODEL = "demo-chat"
# (connections, wrk threads): one client in sequence, then ten at once.
LOADS = [(1, 1), (10, 2)]
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


@dataclass(frozen=True)
class Scenario:
    """One kind of request, sent straight to the upstream (``direct``) or through the gateway."""

    request: str  # the table's label, e.g. "chat → OpenAI (pass-through)"
    target: str  # direct | gateway
    path: str
    body: dict
    headers: dict
    baseline: str  # the direct scenario whose upstream work this one also does


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- wrk output


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # wrk's "Non-2xx or 3xx responses" (it counts status >= 400)
    socket_errors: int  # connect + read + write + timeout

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk_output(text: str) -> WrkResult:
    """The numbers of one ``wrk --latency`` run, from its standard report."""
    rps = _RPS.search(text)
    requests = _REQUESTS.search(text)
    percentiles = {float(p): float(v) * _UNIT_MS[unit] for p, v, unit in _PERCENTILE.findall(text)}
    if not rps or not requests or 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError("not the report of a `wrk --latency` run:\n" + text)
    non_2xx = _NON_2XX.search(text)
    socket = _SOCKET.search(text)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class RunResult:
    concurrency: int
    target: str  # "direct" or "gateway"
    result: WrkResult
    request: str = "chat → OpenAI (pass-through)"
    baseline: str = "chat → OpenAI (pass-through)"  # the direct run it is compared with


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def results_table(runs: list[RunResult]) -> str:
    """Markdown table; gateway rows carry their ratio to the direct run of the same upstream work at the
    same concurrency."""
    direct = {(r.concurrency, r.request): r.result for r in runs if r.target == "direct"}
    lines = ["| concurrency | request | target | RPS | p50 | p99 | errors | RPS gateway/direct | p50 overhead |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        r = run.result
        ratio = overhead = ""
        base = direct.get((run.concurrency, run.baseline))
        if run.target == "gateway" and base is not None:
            ratio = f"{r.requests_per_s / base.requests_per_s:.2f}×" if base.requests_per_s else "n/a"
            overhead = f"+{r.p50_ms - base.p50_ms:.2f} ms"
        lines.append(f"| {run.concurrency} | {run.request} | {run.target} | {r.requests_per_s:,.0f} | "
                     f"{_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.errors} | {ratio} | {overhead} |")
    return "\n".join(lines)


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


def results_section(runs: list[RunResult], duration_s: int, warmup_s: int, when: dt.datetime,
                    machine: str) -> str:
    return "\n".join([
        RESULTS_START,
        "## Latest results",
        "",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine}",
        f"- Method: `wrk --latency`, {duration_s}s per run, non-streaming requests with one short user "
        f"message and max_tokens 16: POST /v1/chat/completions to an OpenAI upstream, POST /v1/messages to an "
        f"Anthropic upstream, and POST /v1/chat/completions translated for the Anthropic upstream, after a "
        f"{warmup_s}s warm-up of the gateway. "
        "*direct* calls the demo provider itself (its OpenAI or Anthropic face); *gateway* calls the same "
        "demo provider through `llmgw run` (edge → router over NATS → upstream → usage event), in the same "
        "session; a translated row is compared with the direct run of the upstream it calls. "
        "Concurrency 1 uses 1 wrk thread, concurrency 10 uses 2. Load generator, gateway and "
        "upstream share the machine. Errors = non-2xx responses + socket errors.",
        "",
        results_table(runs),
        RESULTS_END,
    ])


_DOCUMENT_HEAD = """# Benchmarks

`make bench` (or `llmgw bench --peers`) compares the gateway with LiteLLM's proxy and
Portkey's gateway in front of the same demo provider; `make bench PEERS=0` (or `llmgw bench
[--duration S] [--output FILE]`) measures what the gateway adds on top of its upstream. Both
drive the systems with `wrk` (`apt-get install wrk`). The sections below are rewritten by
every run.
"""


def replace_results_section(document: str, section: str) -> str:
    """``document`` with its results section replaced by ``section`` (appended when absent)."""
    start, end = document.find(RESULTS_START), document.find(RESULTS_END)
    if start != -1 and end > start:
        return document[:start] + section + document[end + len(RESULTS_END):]
    if not document.strip():
        document = _DOCUMENT_HEAD
    return document.rstrip("\n") + "\n\n" + section + "\n"


def write_results(path: Path, section: str) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_results_section(existing, section), encoding="utf-8")


# ---------------------------------------------------------------- processes


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


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
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


def _check(url: str, body: dict, headers: dict[str, str]) -> None:
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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- the run


def write_gateway_config(path: Path, upstream_port: int) -> None:
    data = {
        "version": 1,
        "providers": [{
            "id": "demo",
            "type": "openai",
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "free_tier": True,
            "models": [{"name": MODEL}],
        }, {
            "id": "demo-anthropic",
            "type": "anthropic",
            "base_url": f"http://127.0.0.1:{upstream_port}",
            "free_tier": True,
            "models": [{"name": ANTHROPIC_MODEL, "upstream": MODEL}],
        }],
    }
    parse_config(data, str(path))  # fail here, clearly, if the schema moved on
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def write_wrk_script(path: Path, body: dict | None = None) -> None:
    body_text = json.dumps(CHAT_BODY if body is None else body)
    path.write_text('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = [[{body_text}]]\n", encoding="utf-8")


def scenarios() -> list[Scenario]:
    chat, messages = "chat → OpenAI (pass-through)", "messages → Anthropic (pass-through)"
    upstream_messages = {**MESSAGES_BODY, "model": MODEL}  # the demo provider's own model name
    return [
        Scenario(chat, "direct", "/v1/chat/completions", CHAT_BODY, {}, chat),
        Scenario(chat, "gateway", "/v1/chat/completions", CHAT_BODY, {}, chat),
        Scenario(messages, "direct", "/v1/messages", upstream_messages, ANTHROPIC_HEADERS, messages),
        Scenario(messages, "gateway", "/v1/messages", MESSAGES_BODY, ANTHROPIC_HEADERS, messages),
        Scenario("chat → Anthropic (translated)", "gateway", "/v1/chat/completions",
                 {**CHAT_BODY, "model": ANTHROPIC_MODEL}, {}, messages),
    ]


def run_wrk(url: str, script: Path, connections: int, threads: int, duration_s: int,
            headers: dict[str, str]) -> WrkResult:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "10s",
               "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(command + [url], capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk_output(done.stdout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=int, default=None, metavar="S",
                        help="seconds per wrk run (default 10; 8 with --peers)")
    parser.add_argument("--warmup", type=int, default=None, metavar="S",
                        help="seconds of unrecorded load on the gateway first (default 2; 5 per system with --peers)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"markdown file to update (default {DEFAULT_OUTPUT})")
    parser.add_argument("--api-key", default=os.environ.get("LLMGW_BENCH_API_KEY"),
                        help="gateway API key, when the gateway requires one (env LLMGW_BENCH_API_KEY)")
    parser.add_argument("--peers", action="store_true",
                        help="compare with LiteLLM's proxy and Portkey's gateway (installed, pinned, into "
                             "--bench-dir) instead of the gateway-vs-direct scenarios")
    parser.add_argument("--bench-dir", default=os.environ.get("LLMGW_BENCH_DIR", ".bench"),
                        help="where --peers installs the peers (default .bench, env LLMGW_BENCH_DIR)")
    parser.add_argument("--stream-duration", type=int, default=5, metavar="S",
                        help="seconds of streamed completions per system with --peers (default 5)")


def run_bench(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("llmgw bench needs wrk, the HTTP load generator: install it with `apt-get install wrk` "
              "(or your system's package manager) and run again.", file=sys.stderr)
        return 2
    if not getattr(args, "peers", False):
        args.duration = 10 if args.duration is None else args.duration
        args.warmup = 2 if getattr(args, "warmup", None) is None else args.warmup
    if args.duration is not None and args.duration < 1:
        print("--duration must be at least 1 second", file=sys.stderr)
        return 2
    state_dir = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    children = ChildProcesses()
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: rely on the caller
        previous_sigterm = None
    keep_state = True  # for a post-mortem, unless the run ended normally or was interrupted
    try:
        if getattr(args, "peers", False):
            from llmgw_cli.bench_peers import run_peers

            code = run_peers(args, state_dir, children)
        else:
            code = _bench(args, state_dir, children)
        keep_state = False
        return code
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        for log in sorted(state_dir.glob("*.log")):
            print(f"--- last lines of {log} ---\n{_tail(log)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        keep_state = False
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if keep_state:
            print(f"state and logs kept in {state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


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


def _bench(args: argparse.Namespace, state_dir: Path, children: ChildProcesses) -> int:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    machine = machine_description()  # before our processes add to the load average
    upstream_port = free_port()
    say(f"starting the demo provider on 127.0.0.1:{upstream_port}")
    start_demo_provider(children, state_dir, upstream_port)

    config = state_dir / "llmgw.yaml"
    write_gateway_config(config, upstream_port)
    edge_port, ui_port = free_port(), free_port()
    say(f"starting the gateway (llmgw run), edge on 127.0.0.1:{edge_port}")
    gateway = children.start(
        "gateway",
        [sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(config), "--state-dir",
         str(state_dir / "state"), "--edge-port", str(edge_port), "--ui-port", str(ui_port)],
        state_dir / "gateway.log", stop_grace_s=GATEWAY_STOP_GRACE_S)
    _wait_http_ok(f"http://127.0.0.1:{edge_port}/healthz", GATEWAY_READY_TIMEOUT_S, gateway)
    say("gateway ready")

    origins = {"direct": f"http://127.0.0.1:{upstream_port}", "gateway": f"http://127.0.0.1:{edge_port}"}
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    planned = []
    for i, scenario in enumerate(scenarios()):
        url = origins[scenario.target] + scenario.path
        headers = {**scenario.headers, **(auth if scenario.target == "gateway" else {})}
        _check(url, scenario.body, headers)
        script = state_dir / f"scenario-{i}.lua"
        write_wrk_script(script, scenario.body)
        planned.append((scenario, url, headers, script))
    if args.warmup > 0:
        say(f"warm-up: {args.warmup}s on the gateway")
        _scenario, url, headers, script = planned[1]
        run_wrk(url, script, 10, 2, args.warmup, headers)

    runs: list[RunResult] = []
    total = len(LOADS) * len(planned)
    for connections, threads in LOADS:
        for scenario, url, headers, script in planned:
            say(f"run {len(runs) + 1}/{total}: {scenario.request}, {scenario.target}, concurrency {connections}, "
                f"{args.duration}s")
            result = run_wrk(url, script, connections, threads, args.duration, headers)
            runs.append(RunResult(connections, scenario.target, result, scenario.request, scenario.baseline))
            say(f"  {result.requests_per_s:,.0f} req/s, p50 {_ms(result.p50_ms)}, p99 {_ms(result.p99_ms)}, "
                f"errors {result.errors}")

    section = results_section(runs, args.duration, args.warmup, dt.datetime.now(dt.timezone.utc), machine)
    print("\n" + results_table(runs) + "\n")
    output = Path(args.output)
    write_results(output, section)
    say(f"results written to {output}")
    errors = sum(r.result.errors for r in runs)
    if errors:
        print(f"{errors} requests failed during the runs: see the errors column", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m llmgw_cli.bench``) until the CLI wires ``llmgw bench``."""
    parser = argparse.ArgumentParser(prog="llmgw bench", description=__doc__)
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
