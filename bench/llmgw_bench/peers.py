"""``python -m llmgw_bench --peers`` (``make bench``): this gateway beside LiteLLM's proxy and Portkey's gateway.

Installs the peers, pinned, into a benchmark folder the project never imports
(``.bench/``: LiteLLM ``litellm[proxy]`` into its own venv, Portkey's gateway
with npm), reusing an install that already has the pinned version. Then, in
front of one demo provider (zero delay, OpenAI-compatible), it measures each
system alone (the others stopped): the upstream called directly, LiteLLM
(2 workers), Portkey, and this gateway (``llmgw run``, usage logging on; the
peers with their logging and telemetry off). Per system: ``wrk`` at
concurrency 1, 10 and 50, the time to the first SSE ``data:`` line of streamed
completions at concurrency 10, CPU time per request at concurrency 10 over
every process of the system, and its idle RSS after a warm-up. A peer that
cannot be installed or started is a row saying why; the run goes on.

The pure parts (``.pth`` inspection, /proc parsing, the streamed-response
reader, the tables) are unit-tested in tests/unit/test_bench_parse.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from llmgw_bench.harness import (
    CHAT_BODY,
    GATEWAY_READY_TIMEOUT_S,
    GATEWAY_STOP_GRACE_S,
    MODEL,
    BenchError,
    ChildProcesses,
    machine_description,
    start_demo_provider,
    write_gateway_config,
)
from llmgw_bench.peer_install import (
    LITELLM_VERSION,
    PORTKEY_VERSION,
    Say,
    install_litellm,
    install_portkey,
    portkey_entry,
)
from llmgw_bench.peer_report import (
    PEER_LOADS,
    STREAM_CONCURRENCY,
    SystemResult,
    latency_table,
    mb,
    peers_section,
    peers_table,
    redis_lines,
    write_peers,
)
from llmgw_bench.procfs import (
    chdb_engine_heap_kib,
    cpu_ms_by_process,
    cpu_seconds_between,
    cpu_ticks,
    process_labels,
    process_memory,
    system_pids,
)
from llmgw_bench.redis_stats import gateway_redis_url, read_calls
from llmgw_bench.streaming import measure_ttfb, percentile
from llmgw_bench.wrk import run_wrk, write_wrk_script
from llmgw_cli.infra import free_port

DEFAULT_BENCH_DIR = ".bench"
CPU_LOAD = 10  # the concurrency whose run is also measured for CPU time
DEFAULT_DURATION_S = 8
DEFAULT_STREAM_S = 5
DEFAULT_WARMUP_S = 5  # the peers warm up longer than the quick run's 2 s: Node's JIT, LiteLLM's 2 workers
START_TIMEOUT_S = {"LiteLLM": 180, "Portkey": 60, "gateway": GATEWAY_READY_TIMEOUT_S}
UPSTREAM_KEY = "dummy"
# the limited gateway row: a limit no run reaches, so every request is admitted against it, from capacity
# leases (routing.leases; issue 20: within 10 % of the unlimited row, Redis commands per request < 0.2)
LIMITED_PER_MINUTE = 1_000_000


def litellm_config(upstream_port: int) -> dict:
    return {
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                               "api_key": UPSTREAM_KEY},
        }],
        # its logging off: no callbacks, no message logging, no telemetry, no spend logs (and no database)
        "litellm_settings": {"telemetry": False, "turn_off_message_logging": True, "set_verbose": False,
                             "json_logs": False, "callbacks": [], "success_callback": [], "failure_callback": []},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }


# uvicorn's logging for LiteLLM: warnings and errors only, no access log line per request
LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def _plain_env(**extra: str) -> dict[str, str]:
    """A peer's environment: none of ours (no NATS_URL, REDIS_URL, DATABASE_URL, keys), only the basics."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")}
    env.update(extra)
    return env


def portkey_headers(upstream_port: int) -> dict[str, str]:
    """Portkey routes by headers: the provider, the OpenAI-compatible host to call, the upstream's key."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
            "Authorization": f"Bearer {UPSTREAM_KEY}"}


@dataclass
class Running:
    proc: subprocess.Popen
    url: str  # chat completions
    headers: dict[str, str]
    state_dir: Path | None = None  # this gateway's: where ``llmgw run`` says which Redis it started


def _wait_answer(url: str, headers: dict[str, str], proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until one chat completion answers 200 (then one streamed one must too)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before answering")
        try:
            response = httpx.post(url, json=CHAT_BODY, headers=headers, timeout=10)
            if response.status_code == 200 and response.json().get("choices"):
                break
            last = f"{response.status_code}: {response.text[:300]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    else:
        raise BenchError(f"{what} did not answer a chat completion within {timeout_s:g}s (last: {last})")
    with httpx.stream("POST", url, json={**CHAT_BODY, "stream": True}, headers=headers, timeout=10) as stream:
        text = stream.read().decode(errors="replace")
        if stream.status_code != 200 or "data:" not in text:
            raise BenchError(f"{what} answered a streamed completion with {stream.status_code}: {text[:300]}")


def start_litellm(children: ChildProcesses, state_dir: Path, venv: Path, upstream_port: int) -> Running:
    work = state_dir / "litellm"
    work.mkdir(exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(litellm_config(upstream_port), sort_keys=False), encoding="utf-8")
    log_config = work / "log-config.json"
    log_config.write_text(json.dumps(LITELLM_LOG_CONFIG, indent=2), encoding="utf-8")
    port = free_port()
    env = _plain_env(LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION", LITELLM_LOCAL_MODEL_COST_MAP="True",
                     LITELLM_DONT_SHOW_FEEDBACK_BOX="true", NO_DOCS="True")
    proc = children.start("LiteLLM", [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                                      "--port", str(port), "--num_workers", "2", "--telemetry", "False",
                                      "--log_config", str(log_config)],
                          state_dir / "litellm.log", stop_grace_s=20, cwd=work, env=env)
    return Running(proc, f"http://127.0.0.1:{port}/v1/chat/completions", {})


def start_portkey(children: ChildProcesses, state_dir: Path, portkey_dir: Path, upstream_port: int) -> Running:
    port = free_port()
    env = _plain_env(NODE_ENV="production")
    proc = children.start("Portkey", ["node", "--require", str(portkey_dir / "loopback.cjs"),
                                      str(portkey_entry(portkey_dir)), f"--port={port}", "--headless"],
                          state_dir / "portkey.log", stop_grace_s=10, cwd=portkey_dir, env=env)
    return Running(proc, f"http://127.0.0.1:{port}/v1/chat/completions", portkey_headers(upstream_port))


def start_gateway(children: ChildProcesses, state_dir: Path, upstream_port: int, api_key: str | None,
                  requests_per_minute: int | None = None, leases: bool = False) -> Running:
    """``llmgw run`` in a directory of its own (``gateway`` or ``gateway-limited``)."""
    work = state_dir / ("gateway" if requests_per_minute is None else "gateway-limited")
    work.mkdir(exist_ok=True)
    config = work / "llmgw.yaml"
    write_gateway_config(config, upstream_port, requests_per_minute, leases)
    edge_port, ui_port = free_port(), free_port()
    proc = children.start(
        "gateway",
        [sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(config), "--state-dir",
         str(work / "state"), "--edge-port", str(edge_port), "--ui-port", str(ui_port)],
        work / "gateway.log", stop_grace_s=GATEWAY_STOP_GRACE_S)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Running(proc, f"http://127.0.0.1:{edge_port}/v1/chat/completions", headers, state_dir=work / "state")


def measure(system: Running, name: str, state_dir: Path, duration_s: int, warmup_s: int, stream_s: int,
            say: Say) -> SystemResult:
    result = SystemResult(name)
    script = state_dir / "chat.lua"
    write_wrk_script(script, CHAT_BODY)
    if warmup_s > 0:
        run_wrk(system.url, script, 10, 2, warmup_s, system.headers)
    time.sleep(1)  # let the warm-up's connections close
    pids = system_pids(system.proc.pid)
    redis_url = gateway_redis_url(system.state_dir) if system.state_dir else None
    if system.state_dir and not redis_url:
        result.redis_note = "its Redis could not be found (no runtime.json)"
    result.memory = process_memory(pids)
    if result.chdb_kib:
        result.chdb_heap_kib = chdb_engine_heap_kib()
    say(f"  idle RSS {mb(result.rss_kib)} over {len(result.memory)} processes")
    for connections, threads in PEER_LOADS:
        pids = system_pids(system.proc.pid) if connections == CPU_LOAD else []
        labels = process_labels(pids)
        before = cpu_ticks(pids)
        redis_before = read_calls(redis_url) if redis_url and connections == CPU_LOAD else None
        run = run_wrk(system.url, script, connections, threads, duration_s, system.headers)
        if connections == CPU_LOAD and redis_url:
            redis_after = read_calls(redis_url)
            if redis_before is not None and redis_after is not None and run.requests:
                result.redis_per_request = (redis_after - redis_before).per_request(run.requests)
            else:
                result.redis_note = "Redis could not be read"
        if connections == CPU_LOAD:
            pids_after = system_pids(system.proc.pid)
            labels.update(process_labels([pid for pid in pids_after if pid not in labels]))
            after = cpu_ticks(pids_after)
            used = cpu_seconds_between(before, after)
            result.cpu_ms_per_request = used * 1000 / run.requests if run.requests else None
            if run.requests:
                result.cpu_by_process = cpu_ms_by_process(before, after, labels, run.requests)
        result.wrk[connections] = run
        cpu = f", CPU {result.cpu_ms_per_request:.2f} ms/request" if connections == CPU_LOAD and \
            result.cpu_ms_per_request is not None else ""
        say(f"  c={connections}: {run.requests_per_s:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
            f"errors {run.errors}{cpu}")
    streams = measure_ttfb(system.url, CHAT_BODY, system.headers, STREAM_CONCURRENCY, stream_s)
    result.streams, result.stream_errors = len(streams.ttfb_s), streams.errors
    if streams.ttfb_s:
        result.ttfb_p50_ms = percentile(streams.ttfb_s, 50) * 1000
    say(f"  streams c={STREAM_CONCURRENCY}: {len(streams.ttfb_s):,} complete, TTFB p50 "
        + (f"{result.ttfb_p50_ms:.2f} ms" if result.ttfb_p50_ms is not None else "—")
        + (f", {streams.errors} failed (first: {streams.first_error})" if streams.errors else ""))
    return result


def run_peers(args: argparse.Namespace, state_dir: Path, children: ChildProcesses) -> int:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    machine = machine_description()  # before our processes add to the load average
    duration_s = args.duration if args.duration is not None else DEFAULT_DURATION_S
    warmup_s = args.warmup if args.warmup is not None else DEFAULT_WARMUP_S
    stream_s = getattr(args, "stream_duration", None) or DEFAULT_STREAM_S
    bench_dir = Path(getattr(args, "bench_dir", None) or DEFAULT_BENCH_DIR).resolve()

    installs = {"LiteLLM": install_litellm(bench_dir, say), "Portkey": install_portkey(bench_dir, say)}
    for install in installs.values():
        if not install.ok:
            say(f"{install.name}: not installed: {install.detail}")

    upstream_port = free_port()
    say(f"starting the demo provider (the upstream of every system) on 127.0.0.1:{upstream_port}")
    upstream = start_demo_provider(children, state_dir, upstream_port)

    plan = [
        ("direct to upstream", None, lambda: Running(upstream, f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                                                     {"Authorization": f"Bearer {UPSTREAM_KEY}"})),
        (f"LiteLLM {LITELLM_VERSION} (2 workers)", "LiteLLM",
         lambda: start_litellm(children, state_dir, Path(installs["LiteLLM"].detail), upstream_port)),
        (f"Portkey gateway {PORTKEY_VERSION}", "Portkey",
         lambda: start_portkey(children, state_dir, Path(installs["Portkey"].detail), upstream_port)),
        ("this gateway (usage logging on)", "gateway",
         lambda: start_gateway(children, state_dir, upstream_port, args.api_key)),
        (f"this gateway, a limit on the route ({LIMITED_PER_MINUTE:,} requests/min, leased admission)", "gateway",
         lambda: start_gateway(children, state_dir, upstream_port, args.api_key, LIMITED_PER_MINUTE, leases=True)),
    ]
    results: list[SystemResult] = []
    for name, key, start in plan:
        install = installs.get(key or "")
        if install is not None and not install.ok:
            results.append(SystemResult(name, status=f"not installed: {_cell(install.detail)}"))
            continue
        say(f"{name}: starting")
        system = None
        try:
            system = start()
            if key is not None:
                _wait_answer(system.url, system.headers, system.proc, START_TIMEOUT_S[key], name)
            say(f"{name}: answers; measuring")
            result = measure(system, name, state_dir, duration_s, warmup_s, stream_s, say)
            if key is None:
                result.note = ("the demo provider itself: its CPU time and memory are the upstream's, "
                               "not counted in the other rows")
            results.append(result)
        except (BenchError, ValueError, OSError) as exc:
            say(f"{name}: failed: {exc}")
            results.append(SystemResult(name, status=f"failed: {_cell(str(exc))}"))
        finally:
            if system is not None and system.proc is not upstream:
                children.stop(system.proc)

    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    section = peers_section(results, when=dt.datetime.now(dt.timezone.utc), machine=machine, load_after=load_after,
                            duration_s=duration_s, warmup_s=warmup_s, stream_s=stream_s,
                            elapsed_s=time.monotonic() - started)
    print("\n" + peers_table(results) + "\n\n" + latency_table(results) + "\n")
    if redis_lines(results):
        print("Redis per request (c=10):\n" + "\n".join(redis_lines(results)) + "\n")
    output = Path(args.output)
    write_peers(output, section)
    say(f"results written to {output}")
    errors = sum(run.errors for r in results for run in r.wrk.values()) + sum(r.stream_errors for r in results)
    if errors:
        print(f"{errors} requests failed during the runs: see the errors columns", file=sys.stderr)
    ours = [r for (_name, key, _start), r in zip(plan, results) if key == "gateway"]
    for r in ours:
        if r.status:
            print(f"{r.name} could not be measured: {r.status}", file=sys.stderr)
    return 1 if any(r.status or r.stream_errors or any(run.errors for run in r.wrk.values()) for r in ours) else 0


def _cell(text: str) -> str:
    """Text for one table cell: one line, no pipes, not too long."""
    return " ".join(text.replace("|", "/").split())[:240]
