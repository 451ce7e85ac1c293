"""The peers' results: the tables and the section of docs/benchmarks.md they rewrite."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from llmgw_bench.harness import DOCUMENT_HEAD, RESULTS_START
from llmgw_bench.procfs import ProcessMemory
from llmgw_bench.wrk import WrkResult

PEERS_START = "<!-- bench:peers:start -->"
PEERS_END = "<!-- bench:peers:end -->"
# (connections, wrk threads): the table's columns
PEER_LOADS = [(1, 1), (10, 2), (50, 2)]
STREAM_CONCURRENCY = 10


@dataclass
class SystemResult:
    name: str
    status: str = ""  # empty when measured, else "not installed: ..." / "failed: ..."
    wrk: dict[int, WrkResult] = field(default_factory=dict)
    ttfb_p50_ms: float | None = None
    streams: int = 0
    stream_errors: int = 0
    cpu_ms_per_request: float | None = None
    cpu_by_process: list[tuple[str, float]] = field(default_factory=list)  # (label, CPU ms / request) at c=10
    memory: list[ProcessMemory] = field(default_factory=list)
    chdb_heap_kib: int | None = None  # what opening chDB adds beyond its library pages (a separate process)
    redis_per_request: tuple[float, float] | None = None  # (commands, script runs) per request at c=10
    redis_note: str = ""  # why Redis was not measured, for a system that has one
    note: str = ""

    @property
    def rss_kib(self) -> int:
        return sum(m.rss_kib for m in self.memory)

    @property
    def chdb_kib(self) -> int:
        return sum(m.chdb_kib for m in self.memory)


def mb(kib: int) -> str:
    return f"{kib / 1024:,.0f} MB"


def _rps(result: SystemResult, concurrency: int) -> str:
    run = result.wrk.get(concurrency)
    return f"{run.requests_per_s:,.0f}" if run else "—"


def peers_table(results: list[SystemResult]) -> str:
    """The comparison table; the first measured row is the upstream called directly (the baseline)."""
    direct = results[0].wrk.get(1) if results and not results[0].status else None
    lines = ["| system | RPS c=1 | RPS c=10 | RPS c=50 | added p50 c=1 | stream TTFB p50 c=10 | "
             "CPU ms/request c=10 | idle RSS, all processes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(results):
        if r.status:
            lines.append(f"| {r.name} | {r.status} | — | — | — | — | — | — |")
            continue
        c1 = r.wrk.get(1)
        if i == 0:
            added = "(baseline)"
        elif c1 and direct:
            added = f"+{c1.p50_ms - direct.p50_ms:.2f} ms"
        else:
            added = "—"
        ttfb = f"{r.ttfb_p50_ms:.2f} ms" if r.ttfb_p50_ms is not None else "—"
        cpu = f"{r.cpu_ms_per_request:.2f}" if r.cpu_ms_per_request is not None else "—"
        rss = mb(r.rss_kib) if r.memory else "—"
        if r.chdb_kib and r.chdb_heap_kib is not None:
            rss += (f" ({mb(r.rss_kib - r.chdb_kib - r.chdb_heap_kib)} without the chDB engine: "
                    f"{mb(r.chdb_kib)} library pages, {mb(r.chdb_heap_kib)} heap)")
        elif r.chdb_kib:
            rss += f" ({mb(r.rss_kib - r.chdb_kib)} without chDB's library pages)"
        lines.append(f"| {r.name} | {_rps(r, 1)} | {_rps(r, 10)} | {_rps(r, 50)} | {added} | {ttfb} | {cpu} | {rss} |")
    return "\n".join(lines)


def latency_table(results: list[SystemResult]) -> str:
    loads = [c for c, _threads in PEER_LOADS]
    lines = ["| system | " + " | ".join(f"p50 / p99 c={c}" for c in loads) + " | errors | streams (errors) |",
             "|---|" + "---:|" * (len(loads) + 2)]
    for r in results:
        if r.status:
            continue
        cells = []
        for c in loads:
            run = r.wrk.get(c)
            cells.append(f"{run.p50_ms:.2f} / {run.p99_ms:.2f} ms" if run else "—")
        errors = sum(run.errors for run in r.wrk.values())
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {errors} | {r.streams:,} ({r.stream_errors}) |")
    return "\n".join(lines)


def cpu_lines(results: list[SystemResult]) -> list[str]:
    out = []
    for r in results:
        if r.status or not r.cpu_by_process:
            continue
        out.append(f"- {r.name}: " + ", ".join(f"{label} {ms:.3f}" for label, ms in r.cpu_by_process))
    return out


def redis_lines(results: list[SystemResult]) -> list[str]:
    """Redis per request during the concurrency-10 run, for the systems that use one (redis_stats.py)."""
    out = []
    for r in results:
        if r.status:
            continue
        if r.redis_per_request is not None:
            commands, scripts = r.redis_per_request
            out.append(f"- {r.name}: {commands:.2f} commands per request ({scripts:.2f} script runs; "
                       "commands inside scripts included)")
        elif r.redis_note:
            out.append(f"- {r.name}: {r.redis_note}")
    return out


def memory_lines(results: list[SystemResult]) -> list[str]:
    out = []
    for r in results:
        if r.status or not r.memory:
            continue
        parts = [f"{m.label} {mb(m.rss_kib)}" + (f" (chDB library {mb(m.chdb_kib)})" if m.chdb_kib else "")
                 for m in r.memory]
        out.append(f"- {r.name}: " + ", ".join(parts))
    return out


def peers_section(results: list[SystemResult], *, when: dt.datetime, machine: str, load_after: str,
                  duration_s: int, warmup_s: int, stream_s: int, elapsed_s: float) -> str:
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    return "\n".join([
        PEERS_START,
        "## Peers: latest results",
        "",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine}; load average {load_after} at the end (the benchmark's own load included)",
        f"- Load: `wrk --latency`, {duration_s}s per run at concurrency 1 (1 thread), 10 and 50 (2 threads), "
        f"after a {warmup_s}s warm-up at concurrency 10; streamed completions at concurrency "
        f"{STREAM_CONCURRENCY} for {stream_s}s; whole run {elapsed_s / 60:.1f} min",
        "",
        peers_table(results),
        "",
        "Latency (wrk) and errors (non-2xx responses + socket errors, over the three runs; streams that did not "
        "answer 200 with a data line and a complete end):",
        "",
        latency_table(results),
        "",
        "CPU ms per request by process (user + system, during the concurrency-10 run):",
        "",
        *cpu_lines(results),
        "",
        *(["Redis per request (INFO commandstats over the concurrency-10 run; goal < 0.2):", "",
           *redis_lines(results), ""] if redis_lines(results) else []),
        "Idle RSS per process (VmRSS after the warm-up, before the measured load):",
        "",
        *memory_lines(results),
        *(["", "Notes:", ""] + notes if notes else []),
        PEERS_END,
    ])


def replace_peers_section(document: str, section: str) -> str:
    """``document`` with its peers section replaced by ``section``: where it was, else before the quick
    results, else at the end."""
    start, end = document.find(PEERS_START), document.find(PEERS_END)
    if start != -1 and end > start:
        return document[:start] + section + document[end + len(PEERS_END):]
    if not document.strip():
        document = DOCUMENT_HEAD
    anchor = document.find(RESULTS_START)
    if anchor != -1:
        return document[:anchor] + section + "\n\n" + document[anchor:]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def write_peers(path: Path, section: str) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_peers_section(existing, section), encoding="utf-8")


