"""``python -m llmgw_bench`` (``make bench PEERS=0``): what the gateway costs, measured against its upstream
called directly.

Starts the demo provider (zero delay; it speaks OpenAI and Anthropic) and a
whole gateway (``llmgw run``) in front of it, then drives both with ``wrk`` at
concurrency 1 and 10 in the same session: OpenAI chat passed through to an
OpenAI upstream, Anthropic messages passed through to an Anthropic upstream,
and OpenAI chat translated for the Anthropic upstream, each beside the
upstream called directly. Writes the table to docs/benchmarks.md. Every
process it starts is stopped again, on error and on Ctrl-C too.

With ``--peers`` (what ``make bench`` runs) it compares the gateway with LiteLLM's proxy and
Portkey's gateway instead: see peers.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from llmgw_bench.harness import (
    ANTHROPIC_HEADERS,
    ANTHROPIC_MODEL,
    CHAT_BODY,
    DOCUMENT_HEAD,
    GATEWAY_READY_TIMEOUT_S,
    GATEWAY_STOP_GRACE_S,
    MESSAGES_BODY,
    MODEL,
    RESULTS_END,
    RESULTS_START,
    ChildProcesses,
    check_answers,
    machine_description,
    start_demo_provider,
    wait_http_ok,
    write_gateway_config,
)
from llmgw_bench.wrk import WrkResult, run_wrk, write_wrk_script
from llmgw_cli.infra import free_port

# (connections, wrk threads): one client in sequence, then ten at once.
LOADS = [(1, 1), (10, 2)]


@dataclass(frozen=True)
class Scenario:
    """One kind of request, sent straight to the upstream (``direct``) or through the gateway."""

    request: str  # the table's label, e.g. "chat → OpenAI (pass-through)"
    target: str  # direct | gateway
    path: str
    body: dict
    headers: dict
    baseline: str  # the direct scenario whose upstream work this one also does


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


def replace_results_section(document: str, section: str) -> str:
    """``document`` with its results section replaced by ``section`` (appended when absent)."""
    start, end = document.find(RESULTS_START), document.find(RESULTS_END)
    if start != -1 and end > start:
        return document[:start] + section + document[end + len(RESULTS_END):]
    if not document.strip():
        document = DOCUMENT_HEAD
    return document.rstrip("\n") + "\n\n" + section + "\n"


def write_results(path: Path, section: str) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_results_section(existing, section), encoding="utf-8")


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


def run_quick(args: argparse.Namespace, state_dir: Path, children: ChildProcesses) -> int:
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
    wait_http_ok(f"http://127.0.0.1:{edge_port}/healthz", GATEWAY_READY_TIMEOUT_S, gateway)
    say("gateway ready")

    origins = {"direct": f"http://127.0.0.1:{upstream_port}", "gateway": f"http://127.0.0.1:{edge_port}"}
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    planned = []
    for i, scenario in enumerate(scenarios()):
        url = origins[scenario.target] + scenario.path
        headers = {**scenario.headers, **(auth if scenario.target == "gateway" else {})}
        check_answers(url, scenario.body, headers)
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


