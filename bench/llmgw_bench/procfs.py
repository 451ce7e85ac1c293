"""/proc, read for the benchmark: a system's processes, their CPU time and memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    ppid: int
    cpu_ticks: int  # utime + stime, in clock ticks


def parse_proc_stat(text: str) -> ProcStat:
    """One ``/proc/<pid>/stat`` line (the command name may hold spaces and parentheses)."""
    pid_part, rest = text.split(" (", 1)
    comm, after = rest.rsplit(")", 1)
    fields = after.split()
    # after the command: state(3) ppid(4) ... utime(14) stime(15), numbered from 1 over the whole line
    return ProcStat(pid=int(pid_part), comm=comm, ppid=int(fields[1]), cpu_ticks=int(fields[11]) + int(fields[12]))


def parse_vmrss_kib(status_text: str) -> int:
    """VmRSS of a ``/proc/<pid>/status`` text, in KiB (0 for a kernel thread or a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


_SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def smaps_rss_kib(smaps_text: str, path_contains: str) -> int:
    """Sum of the Rss of the mappings (in ``/proc/<pid>/smaps``) whose file path contains ``path_contains``."""
    total, inside = 0, False
    for line in smaps_text.splitlines():
        if _SMAPS_HEADER.match(line):
            parts = line.split(None, 5)
            inside = len(parts) == 6 and path_contains in parts[5]
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


# Run in a separate process: what opening chDB adds to a process beyond its library's pages (ClickHouse's own
# heap: function and format registries, caches), the way the usage service opens it. Prints two numbers, KiB:
# RSS added by opening chDB, and of that the Rss of chDB's library mappings.
_CHDB_ENGINE_PROBE = """
import re, sys, tempfile
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
def library():
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            inside = len(parts) == 6 and "/chdb" in parts[5]
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total
import clickhouse_connect
from llmgw_common import clickhouse_conn
before = rss()
with tempfile.TemporaryDirectory() as path:
    client = clickhouse_conn.connect_clickhouse("", path)
    client.query("SELECT count() FROM system.one")
    print(rss() - before, library())
"""


def chdb_engine_heap_kib() -> int | None:
    """RSS that opening chDB adds beyond its library's pages, measured in a fresh process (None: unknown).
    Counted as the embedded ClickHouse engine's: a floor, since its caches grow as it works."""
    try:
        out = subprocess.run([sys.executable, "-c", _CHDB_ENGINE_PROBE], capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        added, library = int(out[0]), int(out[1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return max(0, added - library)


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and every process below it, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found


def process_label(argv: list[str]) -> str:
    """A short name for a process of a benchmarked system, from its command line."""
    if not argv:
        return "?"
    joined = " ".join(argv)
    if "llmgw_cli.main" in argv:
        following = argv[argv.index("llmgw_cli.main") + 1:]
        return "runner" if following[:1] == ["run"] else (following[0] if following else "llmgw")
    if "llmgw_demo_provider" in joined:
        return "demo provider"
    if "multiprocessing.spawn" in joined:
        return "worker"
    if "multiprocessing.resource_tracker" in joined:
        return "resource tracker"
    if len(argv) > 1 and Path(argv[1]).name == "litellm":
        return "litellm"
    base = Path(argv[0]).name
    if base.startswith("redis-server") or base.startswith("valkey"):
        return "redis"
    return base


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _proc_table() -> dict[int, ProcStat]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                table[int(entry)] = parse_proc_stat(_read(f"/proc/{entry}/stat"))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return table


def system_pids(root: int) -> list[int]:
    return descendants(root, {pid: st.ppid for pid, st in _proc_table().items()})


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        try:
            ticks[pid] = parse_proc_stat(_read(f"/proc/{pid}/stat")).cpu_ticks
        except (OSError, ValueError, IndexError):
            pass
    return ticks


def cpu_ms_by_process(before: dict[int, int], after: dict[int, int], labels: dict[int, str],
                      requests: int) -> list[tuple[str, float]]:
    """CPU milliseconds per request of each process between two snapshots, by label (processes with the
    same label added up), largest first."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    by_label: dict[str, float] = {}
    for pid in set(before) | set(after):
        ticks = after.get(pid, before.get(pid, 0)) - before.get(pid, 0)
        label = labels.get(pid, "?")
        by_label[label] = by_label.get(label, 0.0) + ticks * 1000 / hz / max(requests, 1)
    return sorted(by_label.items(), key=lambda item: (-item[1], item[0]))


def process_labels(pids: list[int]) -> dict[int, str]:
    labels = {}
    for pid in pids:
        try:
            labels[pid] = process_label([a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a])
        except OSError:
            pass
    return labels


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the processes used between two snapshots (a process gone since counts until it left
    nothing; one started since counts whole)."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    ticks = sum(after.get(pid, before.get(pid, 0)) - before.get(pid, 0) for pid in set(before) | set(after))
    return ticks / hz


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    label: str
    rss_kib: int
    chdb_kib: int  # Rss of chDB's library mappings (the usage process' embedded ClickHouse)


def process_memory(pids: list[int]) -> list[ProcessMemory]:
    out = []
    for pid in pids:
        try:
            argv = [a for a in _read(f"/proc/{pid}/cmdline").split("\0") if a]
            rss = parse_vmrss_kib(_read(f"/proc/{pid}/status"))
            chdb = smaps_rss_kib(_read(f"/proc/{pid}/smaps"), "/chdb") if "usage" in argv else 0
        except OSError:
            continue
        out.append(ProcessMemory(pid, process_label(argv), rss, chdb))
    return out


