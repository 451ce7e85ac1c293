"""``llmgw bench --peers`` (``make bench``): this gateway beside LiteLLM's proxy and Portkey's gateway.

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
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import yaml

from llmgw_cli import bench
from llmgw_cli.infra import free_port

LITELLM_VERSION = "1.80.5"  # an exact version known to be clean; never a 1.107.x
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER_VERSION = "1.13.8"  # later @hono/node-server versions break Portkey's streaming
DEFAULT_BENCH_DIR = ".bench"
PEERS_START = "<!-- bench:peers:start -->"
PEERS_END = "<!-- bench:peers:end -->"
# (connections, wrk threads)
PEER_LOADS = [(1, 1), (10, 2), (50, 2)]
CPU_LOAD = 10  # the concurrency whose run is also measured for CPU time
STREAM_CONCURRENCY = 10
DEFAULT_DURATION_S = 8
DEFAULT_STREAM_S = 5
DEFAULT_WARMUP_S = 5  # the peers warm up longer than the quick run's 2 s: Node's JIT, LiteLLM's 2 workers
START_TIMEOUT_S = {"LiteLLM": 180, "Portkey": 60, "gateway": bench.GATEWAY_READY_TIMEOUT_S}
PIP_TIMEOUT_S = 900
NPM_TIMEOUT_S = 600
UPSTREAM_KEY = "dummy"

# .pth files whose import lines we accept, by file name and the distribution that owns it (its RECORD
# lists the file): setuptools' shim that lets SETUPTOOLS_USE_DISTUTILS pick distutils.
ALLOWED_PTH_HOOKS = {"distutils-precedence.pth": "setuptools"}

Say = Callable[[str], None]


# ---------------------------------------------------------------- installs


@dataclass(frozen=True)
class Install:
    name: str
    ok: bool
    detail: str  # what is installed (ok) or why not


def pth_import_lines(text: str) -> list[str]:
    """The lines of a ``.pth`` file that ``site`` executes at every interpreter start."""
    return [line for line in text.splitlines() if line.startswith(("import ", "import\t"))]


def _dist_name(dist_info: str) -> str:
    """``litellm_proxy_extras-0.4.3.dist-info`` -> ``litellm-proxy-extras`` (normalized)."""
    name = dist_info[: -len(".dist-info")].split("-")[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(site_packages: Path, distribution: str) -> str | None:
    """The version of ``distribution`` from its ``.dist-info`` folder's name, without running Python there."""
    wanted = re.sub(r"[-_.]+", "-", distribution).lower()
    for info in site_packages.glob("*.dist-info"):
        if _dist_name(info.name) == wanted:
            return info.name[: -len(".dist-info")].split("-", 1)[1]
    return None


def pth_owners(site_packages: Path) -> dict[str, str]:
    """Top-level ``.pth`` file name -> the distribution whose RECORD installed it."""
    owners: dict[str, str] = {}
    for record in site_packages.glob("*.dist-info/RECORD"):
        owner = _dist_name(record.parent.name)
        for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
            path = line.split(",", 1)[0]
            if path.endswith(".pth") and "/" not in path:
                owners[path] = owner
    return owners


def unexpected_pth_hooks(site_packages: Path) -> list[str]:
    """Every ``.pth`` start-up hook (a line ``site`` executes) but the allowed ones, as ``file (owner): line``."""
    owners = pth_owners(site_packages)
    problems = []
    for pth in sorted(site_packages.glob("*.pth")):
        lines = pth_import_lines(pth.read_text(encoding="utf-8", errors="replace"))
        owner, allowed_owner = owners.get(pth.name), ALLOWED_PTH_HOOKS.get(pth.name)
        if lines and (allowed_owner is None or allowed_owner != owner):
            problems.append(f"{pth.name} (from {owner or 'no installed package'}): {lines[0][:160]}")
    return problems


def venv_site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    errors = [line for line in lines if line.startswith(("ERROR", "npm error", "npm ERR!"))]
    picked = errors[-3:] if errors else lines[-2:]
    text = re.sub(r" \(from versions: [^)]*\)", "", " ".join(picked))  # pip lists every release
    return text[:300] or "no output"


def install_litellm(bench_dir: Path, say: Say) -> Install:
    name = f"LiteLLM {LITELLM_VERSION}"
    venv = bench_dir / "litellm-venv"
    site = venv_site_packages(venv)
    if site is not None and installed_version(site, "litellm") == LITELLM_VERSION:
        say(f"{name}: already installed in {venv} (reused)")
    else:
        say(f"{name}: installing litellm[proxy]=={LITELLM_VERSION} into {venv} (pip, a minute or two)")
        log = bench_dir / "litellm-install.log"
        bench_dir.mkdir(parents=True, exist_ok=True)
        try:
            # --clear: nothing of an older install (and none of its start-up hooks) runs with the new pip
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                           text=True, timeout=300)
            done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                   "--disable-pip-version-check", f"litellm[proxy]=={LITELLM_VERSION}"],
                                  capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            return Install(name, False, f"python -m venv failed: {_last_error(exc.stderr or exc.stdout or '')}")
        except subprocess.TimeoutExpired:
            return Install(name, False, f"pip install did not finish within {PIP_TIMEOUT_S}s")
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            return Install(name, False, f"pip install failed: {_last_error(done.stdout + done.stderr)}")
        site = venv_site_packages(venv)
    version = installed_version(site, "litellm") if site else None
    if version != LITELLM_VERSION:
        return Install(name, False, f"expected litellm {LITELLM_VERSION} in {venv}, found {version or 'none'}")
    hooks = unexpected_pth_hooks(site)
    if hooks:
        return Install(name, False, "refused: .pth start-up hooks beyond the allowed "
                                    f"({', '.join(ALLOWED_PTH_HOOKS)}): " + "; ".join(hooks))
    say(f"{name}: ready, no .pth start-up hooks but {', '.join(ALLOWED_PTH_HOOKS)}")
    return Install(name, True, str(venv))


def portkey_package_json() -> dict:
    return {
        "name": "llmgw-bench-portkey",
        "private": True,
        "description": "generated by llmgw bench --peers: Portkey's gateway, pinned, for the benchmark only",
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION, "@hono/node-server": HONO_NODE_SERVER_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }


def package_versions(node_modules: Path, package: str) -> set[str]:
    """Versions of ``package`` anywhere in a node_modules tree (nested copies included)."""
    versions = set()
    for manifest in node_modules.glob(f"**/node_modules/{package}/package.json"):
        versions.add(json.loads(manifest.read_text(encoding="utf-8")).get("version", "?"))
    top = node_modules / package / "package.json"
    if top.exists():
        versions.add(json.loads(top.read_text(encoding="utf-8")).get("version", "?"))
    return versions


def portkey_entry(portkey_dir: Path) -> Path:
    return portkey_dir / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def _portkey_installed(portkey_dir: Path) -> bool:
    modules = portkey_dir / "node_modules"
    return (portkey_entry(portkey_dir).exists()
            and package_versions(modules, "@portkey-ai/gateway") == {PORTKEY_VERSION}
            and package_versions(modules, "@hono/node-server") == {HONO_NODE_SERVER_VERSION})


# Portkey's server listens on every interface (no host option in 1.15.2): this preload makes a listen()
# without a host listen on loopback only.
LOOPBACK_PRELOAD = """\
// generated by llmgw bench --peers: servers listen on 127.0.0.1 when no host is given
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number') {
    if (args.length >= 2 && (args[1] === undefined || args[1] === null)) args[1] = '127.0.0.1';
    else if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
"""


def install_portkey(bench_dir: Path, say: Say) -> Install:
    name = f"Portkey gateway {PORTKEY_VERSION}"
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return Install(name, False, f"{tool} not found (apt-get install nodejs npm)")
    portkey_dir = bench_dir / "portkey"
    portkey_dir.mkdir(parents=True, exist_ok=True)
    manifest = portkey_dir / "package.json"
    wanted = json.dumps(portkey_package_json(), indent=2) + "\n"
    same_manifest = manifest.exists() and manifest.read_text(encoding="utf-8") == wanted
    (portkey_dir / "loopback.cjs").write_text(LOOPBACK_PRELOAD, encoding="utf-8")
    if same_manifest and _portkey_installed(portkey_dir):
        say(f"{name}: already installed in {portkey_dir} (reused)")
        return Install(name, True, str(portkey_dir))
    say(f"{name}: installing @portkey-ai/gateway@{PORTKEY_VERSION} with @hono/node-server@"
        f"{HONO_NODE_SERVER_VERSION} into {portkey_dir} (npm)")
    manifest.write_text(wanted, encoding="utf-8")
    try:
        # --ignore-scripts: the gateway's only install script is patch-package, with no patches in the package
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                              cwd=portkey_dir, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Install(name, False, f"npm install did not finish within {NPM_TIMEOUT_S}s")
    (bench_dir / "portkey-install.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        return Install(name, False, f"npm install failed: {_last_error(done.stdout + done.stderr)}")
    if not _portkey_installed(portkey_dir):
        modules = portkey_dir / "node_modules"
        return Install(name, False, "npm installed other versions: @portkey-ai/gateway "
                                    f"{sorted(package_versions(modules, '@portkey-ai/gateway'))}, @hono/node-server "
                                    f"{sorted(package_versions(modules, '@hono/node-server'))}")
    say(f"{name}: installed")
    return Install(name, True, str(portkey_dir))


# ---------------------------------------------------------------- /proc


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


# ---------------------------------------------------------------- streaming: time to the first data line


class StreamedResponse:
    """Reads one HTTP/1.1 response to a streaming request, fed as it arrives: the status, when the first
    SSE ``data:`` line began to arrive, and when the response ended (chunked, Content-Length, or the
    connection's close)."""

    def __init__(self) -> None:
        self._head = b""
        self.status: int | None = None
        self.keep_alive = True
        self._chunked = False
        self._length: int | None = None  # Content-Length, counting down
        self._buffer = b""  # undecoded chunked bytes
        self._chunk_left = 0  # data bytes of the current chunk still to come
        self._chunk_crlf = False  # the CRLF after a chunk's data still to come
        self._body_tail = b"\n"  # the last body bytes, to find "data:" at a line start across pieces
        self.first_data_at: float | None = None
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end == -1:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            self._chunked = "chunked" in headers.get("transfer-encoding", "")
            if not self._chunked and "content-length" in headers:
                self._length = int(headers["content-length"])
            self.keep_alive = headers.get("connection") != "close" and (self._chunked or self._length is not None)
            if self._length == 0:
                self.done = True
        if self._chunked:
            self._feed_chunked(data, now)
        elif data:
            if self._length is not None:
                data = data[:self._length]
                self._length -= len(data)
                self.done = self._length <= 0
            self._body(data, now)

    def _feed_chunked(self, data: bytes, now: float) -> None:
        """De-chunks as bytes arrive: a chunk's data counts from its first bytes, not only once complete."""
        self._buffer += data
        while not self.done:
            if self._chunk_left:
                if not self._buffer:
                    return
                piece = self._buffer[:self._chunk_left]
                self._buffer = self._buffer[len(piece):]
                self._chunk_left -= len(piece)
                self._chunk_crlf = self._chunk_left == 0
                self._body(piece, now)
            elif self._chunk_crlf:
                if len(self._buffer) < 2:
                    return
                self._buffer, self._chunk_crlf = self._buffer[2:], False
            else:
                line_end = self._buffer.find(b"\r\n")
                if line_end == -1:
                    return
                size = int(self._buffer[:line_end].split(b";")[0], 16)
                if size == 0:
                    # the last chunk: then optional trailers, ended by an empty line
                    self.done = self._buffer.find(b"\r\n\r\n", line_end) != -1
                    return
                self._buffer, self._chunk_left = self._buffer[line_end + 2:], size

    def _body(self, data: bytes, now: float) -> None:
        if self.first_data_at is None and data:
            text = self._body_tail + data
            if b"\ndata:" in text or b"\rdata:" in text:
                self.first_data_at = now
            self._body_tail = text[-6:]

    def eof(self) -> None:
        if self.status is not None and not self._chunked and self._length is None:
            self.done = True  # a body delimited by the connection's close
        self.keep_alive = False


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclass
class StreamRun:
    ttfb_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def failed(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why


def stream_request(host: str, port: int, path: str, body: dict, headers: dict[str, str]) -> bytes:
    payload = json.dumps({**body, "stream": True}).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            "Accept: text/event-stream", f"Content-Length: {len(payload)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _stream_worker(host: str, port: int, request: bytes, deadline: float, run: StreamRun) -> None:
    reader = writer = None
    try:
        while time.monotonic() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            sent = time.perf_counter()
            writer.write(request)
            response = StreamedResponse()
            while not response.done:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    response.eof()
                    break
                response.feed(data, time.perf_counter())
            if response.status != 200 or response.first_data_at is None or not response.done:
                run.failed(f"status {response.status}, data line {'seen' if response.first_data_at else 'not seen'}"
                           f", {'complete' if response.done else 'cut short'}")
            else:
                run.ttfb_s.append(response.first_data_at - sent)
            if not (response.done and response.keep_alive):
                writer.close()
                reader = writer = None
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        run.failed(f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()


def measure_ttfb(url: str, body: dict, headers: dict[str, str], concurrency: int, duration_s: float) -> StreamRun:
    """``concurrency`` streams at once, one after the other on kept-alive connections, for ``duration_s``."""
    target = httpx.URL(url)
    request = stream_request(target.host, target.port, target.raw_path.decode(), body, headers)
    run = StreamRun()

    async def main() -> None:
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(_stream_worker(target.host, target.port, request, deadline, run)
                               for _ in range(concurrency)))

    asyncio.run(main())
    return run


# ---------------------------------------------------------------- results


@dataclass
class SystemResult:
    name: str
    status: str = ""  # empty when measured, else "not installed: ..." / "failed: ..."
    wrk: dict[int, bench.WrkResult] = field(default_factory=dict)
    ttfb_p50_ms: float | None = None
    streams: int = 0
    stream_errors: int = 0
    cpu_ms_per_request: float | None = None
    cpu_by_process: list[tuple[str, float]] = field(default_factory=list)  # (label, CPU ms / request) at c=10
    memory: list[ProcessMemory] = field(default_factory=list)
    chdb_heap_kib: int | None = None  # what opening chDB adds beyond its library pages (a separate process)
    note: str = ""

    @property
    def rss_kib(self) -> int:
        return sum(m.rss_kib for m in self.memory)

    @property
    def chdb_kib(self) -> int:
        return sum(m.chdb_kib for m in self.memory)


def _mb(kib: int) -> str:
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
        rss = _mb(r.rss_kib) if r.memory else "—"
        if r.chdb_kib and r.chdb_heap_kib is not None:
            rss += (f" ({_mb(r.rss_kib - r.chdb_kib - r.chdb_heap_kib)} without the chDB engine: "
                    f"{_mb(r.chdb_kib)} library pages, {_mb(r.chdb_heap_kib)} heap)")
        elif r.chdb_kib:
            rss += f" ({_mb(r.rss_kib - r.chdb_kib)} without chDB's library pages)"
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


def memory_lines(results: list[SystemResult]) -> list[str]:
    out = []
    for r in results:
        if r.status or not r.memory:
            continue
        parts = [f"{m.label} {_mb(m.rss_kib)}" + (f" (chDB library {_mb(m.chdb_kib)})" if m.chdb_kib else "")
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
        document = bench._DOCUMENT_HEAD
    anchor = document.find(bench.RESULTS_START)
    if anchor != -1:
        return document[:anchor] + section + "\n\n" + document[anchor:]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def write_peers(path: Path, section: str) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_peers_section(existing, section), encoding="utf-8")


# ---------------------------------------------------------------- the systems


def litellm_config(upstream_port: int) -> dict:
    return {
        "model_list": [{
            "model_name": bench.MODEL,
            "litellm_params": {"model": f"openai/{bench.MODEL}", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
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


def _wait_answer(url: str, headers: dict[str, str], proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until one chat completion answers 200 (then one streamed one must too)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise bench.BenchError(f"{what} exited with code {proc.returncode} before answering")
        try:
            response = httpx.post(url, json=bench.CHAT_BODY, headers=headers, timeout=10)
            if response.status_code == 200 and response.json().get("choices"):
                break
            last = f"{response.status_code}: {response.text[:300]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    else:
        raise bench.BenchError(f"{what} did not answer a chat completion within {timeout_s:g}s (last: {last})")
    with httpx.stream("POST", url, json={**bench.CHAT_BODY, "stream": True}, headers=headers, timeout=10) as stream:
        text = stream.read().decode(errors="replace")
        if stream.status_code != 200 or "data:" not in text:
            raise bench.BenchError(f"{what} answered a streamed completion with {stream.status_code}: {text[:300]}")


def start_litellm(children: bench.ChildProcesses, state_dir: Path, venv: Path, upstream_port: int) -> Running:
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


def start_portkey(children: bench.ChildProcesses, state_dir: Path, portkey_dir: Path, upstream_port: int) -> Running:
    port = free_port()
    env = _plain_env(NODE_ENV="production")
    proc = children.start("Portkey", ["node", "--require", str(portkey_dir / "loopback.cjs"),
                                      str(portkey_entry(portkey_dir)), f"--port={port}", "--headless"],
                          state_dir / "portkey.log", stop_grace_s=10, cwd=portkey_dir, env=env)
    return Running(proc, f"http://127.0.0.1:{port}/v1/chat/completions", portkey_headers(upstream_port))


def start_gateway(children: bench.ChildProcesses, state_dir: Path, upstream_port: int, api_key: str | None) -> Running:
    config = state_dir / "llmgw.yaml"
    bench.write_gateway_config(config, upstream_port)
    edge_port, ui_port = free_port(), free_port()
    proc = children.start(
        "gateway",
        [sys.executable, "-m", "llmgw_cli.main", "run", "--config", str(config), "--state-dir",
         str(state_dir / "state"), "--edge-port", str(edge_port), "--ui-port", str(ui_port)],
        state_dir / "gateway.log", stop_grace_s=bench.GATEWAY_STOP_GRACE_S)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Running(proc, f"http://127.0.0.1:{edge_port}/v1/chat/completions", headers)


def measure(system: Running, name: str, state_dir: Path, duration_s: int, warmup_s: int, stream_s: int,
            say: Say) -> SystemResult:
    result = SystemResult(name)
    script = state_dir / "chat.lua"
    bench.write_wrk_script(script, bench.CHAT_BODY)
    if warmup_s > 0:
        bench.run_wrk(system.url, script, 10, 2, warmup_s, system.headers)
    time.sleep(1)  # let the warm-up's connections close
    pids = system_pids(system.proc.pid)
    result.memory = process_memory(pids)
    if result.chdb_kib:
        result.chdb_heap_kib = chdb_engine_heap_kib()
    say(f"  idle RSS {_mb(result.rss_kib)} over {len(result.memory)} processes")
    for connections, threads in PEER_LOADS:
        pids = system_pids(system.proc.pid) if connections == CPU_LOAD else []
        labels = process_labels(pids)
        before = cpu_ticks(pids)
        run = bench.run_wrk(system.url, script, connections, threads, duration_s, system.headers)
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
    streams = measure_ttfb(system.url, bench.CHAT_BODY, system.headers, STREAM_CONCURRENCY, stream_s)
    result.streams, result.stream_errors = len(streams.ttfb_s), streams.errors
    if streams.ttfb_s:
        result.ttfb_p50_ms = percentile(streams.ttfb_s, 50) * 1000
    say(f"  streams c={STREAM_CONCURRENCY}: {len(streams.ttfb_s):,} complete, TTFB p50 "
        + (f"{result.ttfb_p50_ms:.2f} ms" if result.ttfb_p50_ms is not None else "—")
        + (f", {streams.errors} failed (first: {streams.first_error})" if streams.errors else ""))
    return result


def run_peers(args: argparse.Namespace, state_dir: Path, children: bench.ChildProcesses) -> int:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    machine = bench.machine_description()  # before our processes add to the load average
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
    upstream = bench.start_demo_provider(children, state_dir, upstream_port)

    plan = [
        ("direct to upstream", None, lambda: Running(upstream, f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                                                     {"Authorization": f"Bearer {UPSTREAM_KEY}"})),
        (f"LiteLLM {LITELLM_VERSION} (2 workers)", "LiteLLM",
         lambda: start_litellm(children, state_dir, Path(installs["LiteLLM"].detail), upstream_port)),
        (f"Portkey gateway {PORTKEY_VERSION}", "Portkey",
         lambda: start_portkey(children, state_dir, Path(installs["Portkey"].detail), upstream_port)),
        ("this gateway (usage logging on)", "gateway",
         lambda: start_gateway(children, state_dir, upstream_port, args.api_key)),
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
        except (bench.BenchError, ValueError, OSError) as exc:
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
    output = Path(args.output)
    write_peers(output, section)
    say(f"results written to {output}")
    errors = sum(run.errors for r in results for run in r.wrk.values()) + sum(r.stream_errors for r in results)
    if errors:
        print(f"{errors} requests failed during the runs: see the errors columns", file=sys.stderr)
    ours = results[-1]
    if ours.status:
        print(f"this gateway could not be measured: {ours.status}", file=sys.stderr)
        return 1
    return 1 if ours.stream_errors or any(run.errors for run in ours.wrk.values()) else 0


def _cell(text: str) -> str:
    """Text for one table cell: one line, no pipes, not too long."""
    return " ".join(text.replace("|", "/").split())[:240]
