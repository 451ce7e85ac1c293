"""``python -m llmgw_bench ingest [--events N] [--runs R]``: how many usage events per second the usage consumer commits.

On embedded servers in a temp directory (nats-server with JetStream, Redis or
Valkey, chDB), it publishes N synthetic usage events (with the router's admission
reservations, whose amounts go into the Redis windows first) to the usage stream, then
starts the usage consumer in this process (the service's own classes:
``UsageConsumer`` → ``BatchProcessor`` → ``ClickHouseProjection`` (claims, dedup
check, insert with the rollup views) + ``WindowWriter``) and times it from
start until the last event is committed and acknowledged: events/s end to end,
stream to ClickHouse and Redis. Then it checks the result (every event once
in ``usage_events``, the rollups agree with it, the Redis day windows hold
every request and token) and writes the numbers to its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from llmgw_usage.progress import Progress

DEFAULT_EVENTS = 200_000
# runs on a shared 2-CPU VM vary by +-15 % from minute to minute: the median of a few says more than one
DEFAULT_RUNS = 3
DEFAULT_OUTPUT = "docs/benchmarks.md"
SECTION_START = "<!-- bench-ingest:results:start -->"
SECTION_END = "<!-- bench-ingest:results:end -->"
SECTION_INTRO = """
## Usage ingest (`python -m llmgw_bench ingest`)

`python -m llmgw_bench ingest [--events N] [--runs R] [--batch-size B]` measures the usage consumer on its own:
on embedded servers in a temp directory (nats-server with JetStream, Redis or Valkey, chDB)
it publishes N synthetic usage events (stamped within the last seconds, like live traffic,
each with the admission reservation the router attaches, whose amounts it puts into the
Redis windows first, as the router's admission would have) to the usage stream, then runs
the usage consumer in-process (the service's own classes and the config's default batch settings) and times it from its start until the last event is
committed to ClickHouse (with the `usage_minute` and `request_log` views) and the Redis
windows, and acknowledged. Afterwards it checks that every event is in ClickHouse once, that
the rollups agree with the raw events, and that the Redis day windows (admission plus the
consumer's corrections) hold every request and exactly the tokens the events report.
The whole measurement runs R times (default 3) on fresh servers; the results section below
is rewritten by every invocation and gives the median.
"""


class BenchError(RuntimeError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help=f"events to ingest (default {DEFAULT_EVENTS:,})")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"repeat the whole measurement on fresh servers and report the median (default {DEFAULT_RUNS})")
    p.add_argument("--batch-size", type=int, default=None, help="consumer batch size (default: the config default)")
    p.add_argument("--batch-wait", type=float, default=None, help="consumer batch wait in seconds (default: config)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"results file (default {DEFAULT_OUTPUT})")
    p.add_argument("--no-write", action="store_true", help="print the results only")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (data, server logs)")


@dataclass
class IngestResult:
    events: int
    publish_s: float
    ingest_s: float
    batch_size: int
    batch_wait_s: float
    batches: int
    load_before: str
    cpu_s: dict[str, float]  # CPU seconds (user + system) each process used during the ingest

    @property
    def events_per_s(self) -> float:
        return self.events / self.ingest_s if self.ingest_s > 0 else 0.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far (all its threads), from /proc; 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _events(n: int):
    """Synthetic events across 4 providers, 6 models, 5 keys, stamped within the last 5 seconds (as live
    traffic is when it reaches the consumer: events are published right after their request ends). Like the
    router's, each event a provider served carries the reservation admission made for it (an estimate: the
    windows then add only actual - estimate)."""
    import random

    from llmgw_common.messages import Reservation, UsageSimulate, utcnow
    from llmgw_common.windows import usd_to_nano
    from llmgw_usage.simulate import synthetic_events

    now = utcnow()
    rng = random.Random(n)
    q = UsageSimulate(count=min(n, 10_000), providers=["groq-free", "openrouter-free", "openai", "anthropic"],
                      models=["small", "medium", "large", "embed", "code", "chat"],
                      key_ids=[f"key-{i}" for i in range(5)], spread_s=5, error_rate=0.03, seed=7)
    out = []
    while len(out) < n:
        q.count = min(10_000, n - len(out))
        q.seed = len(out)
        for ev in synthetic_events(q, now):
            ev.reservation = Reservation(
                provider=ev.provider, model=ev.model, at_s=int(ev.ts.timestamp()) - rng.randint(0, 3),
                tokens_in=ev.tokens_in + rng.randint(-10, 10), tokens_out=rng.choice((256, 1024, 4096)),
                cost_nano=usd_to_nano(ev.cost_usd) + rng.randint(0, 500_000))
            out.append(ev)
    return out


def _admissions(events):
    """What the router's admission counted in the windows for these events (their reservations), as events
    a rebuild applies in full: the bench puts them in the windows first, as the router would have."""
    from llmgw_common.messages import UsageEvent
    from llmgw_common.windows import nano_to_usd

    return [UsageEvent(id=f"admission-{ev.id}", ts=dt.datetime.fromtimestamp(r.at_s, dt.timezone.utc),
                       request_id=ev.request_id, provider=r.provider, model=r.model, tokens_in=r.tokens_in,
                       tokens_out=r.tokens_out, cost_usd=nano_to_usd(r.cost_nano), status=200)
            for ev in events if (r := ev.reservation) is not None]


async def _wait_jetstream(nc, timeout_s: float = 20.0):
    from llmgw_common.nats_conn import ensure_usage_stream

    js = nc.jetstream(publish_async_max_pending=20_000)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await ensure_usage_stream(js, max_age_s=86400, max_bytes=8 * 1024**3)
            return js
        except Exception:  # noqa: BLE001 - JetStream needs a moment after the port opens
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _run(args, root: Path) -> IngestResult:
    import logging

    logging.getLogger("llmgw_common.nats_conn").setLevel(logging.ERROR)  # "nats disconnected" at close
    from llmgw_cli.infra import NatsServer, RedisServer
    from llmgw_common import subjects
    from llmgw_common.config import UsageConfig
    from llmgw_common.nats_conn import connect_nats
    from llmgw_common.redis_conn import connect_redis
    from llmgw_usage.consumer import UsageConsumer
    from llmgw_usage.ingest import BatchProcessor
    from llmgw_usage.main import tune_gc
    from llmgw_usage.projection import ClickHouseProjection
    from llmgw_usage.store import ClickHouseStore
    from llmgw_usage.windows_writer import WindowWriter

    defaults = UsageConfig()
    batch_size = args.batch_size or defaults.batch_size
    batch_wait = args.batch_wait or defaults.batch_wait_s
    n = args.events
    nats_server = NatsServer(root / "nats", log_file=root / "nats.log").start()
    redis_server = RedisServer(root / "redis", log_file=root / "redis.log").start()
    nc = redis = store = consumer = None
    try:
        nc = await connect_nats(nats_server.url, "llmgw-bench-ingest")
        js = await _wait_jetstream(nc)
        redis = connect_redis(redis_server.url)
        await redis.ping()

        _say(f"generating {n:,} synthetic usage events ...")
        events = _events(n)
        progress = Progress("publish", n)
        t0 = time.monotonic()
        pending = []
        for i, ev in enumerate(events, 1):
            pending.append(await js.publish_async(subjects.usage_event_subject(ev.provider or "none"), ev.encode(),
                                                  headers={"Nats-Msg-Id": ev.id}))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
                progress.update(i)
        await asyncio.gather(*pending)
        publish_s = time.monotonic() - t0
        progress.finish(n)
        await WindowWriter(redis).apply(_admissions(events), int(time.time()), rebuild=True)
        expected = (sum(ev.tokens_in for ev in events), sum(ev.tokens_out for ev in events))
        stream = await js.stream_info(subjects.USAGE_STREAM)
        if stream.state.messages != n:
            raise BenchError(f"the stream holds {stream.state.messages} messages, expected {n}")
        last_seq = stream.state.last_seq
        del events, pending

        store = ClickHouseStore("", root / "clickhouse")
        await store.open()
        processor = BatchProcessor(ClickHouseProjection(store, redis), WindowWriter(redis))
        tune_gc()  # as the usage service does
        consumer = UsageConsumer(js, processor, batch_size, batch_wait, nc=nc)
        load_before = _load()
        _say(f"ingesting with batch size {batch_size}, batch wait {batch_wait}s (load average {load_before}) ...")
        progress = Progress("ingest", n)
        pids = {"consumer (Python + chDB)": "self", "nats-server": nats_server.proc.pid,
                "redis-server": redis_server.proc.pid}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        await consumer.start()
        while True:
            await asyncio.sleep(0.25)
            progress.update(consumer.events)
            if consumer.events >= n:
                info = await js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
                if info.ack_floor.stream_seq >= last_seq and info.num_ack_pending == 0:
                    break
        ingest_s = time.monotonic() - t0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        progress.finish(consumer.events)
        await consumer.stop()
        batches = consumer.batches
        consumer = None
        await _verify(store, redis, n, expected)
        return IngestResult(n, publish_s, ingest_s, batch_size, batch_wait, batches, load_before, cpu)
    finally:
        if consumer is not None:
            await consumer.stop()
        if store is not None:
            await store.close()
        if redis is not None:
            await redis.aclose()
        if nc is not None:
            await nc.close()
        redis_server.stop()
        nats_server.stop()


async def _verify(store, redis, n: int, tokens: tuple[int, int]) -> None:
    """Every event once in ClickHouse, the rollups agree, and the Redis day windows (admission + the
    consumer's corrections) hold every request and exactly the tokens the events report."""
    from llmgw_common.windows import SCOPES_KEY, WindowReader

    raw = (await store.query("SELECT count(), uniqExact(id) FROM usage_events"))[0]
    final = (await store.query("SELECT count(), sum(tokens_in), toString(sum(cost_usd)) FROM usage_events FINAL"))[0]
    rollup = (await store.query("SELECT sum(requests), sum(tokens_in), toString(sum(cost_usd)) FROM usage_minute"))[0]
    log_rows = (await store.query("SELECT count() FROM request_log FINAL"))[0][0]
    if raw != (n, n) or final[0] != n:
        raise BenchError(f"usage_events holds {raw[0]} rows ({raw[1]} distinct ids), FINAL {final[0]}; expected {n}")
    if tuple(rollup) != tuple(final):
        raise BenchError(f"usage_minute {rollup} disagrees with usage_events FINAL {final}")
    if log_rows != n:
        raise BenchError(f"request_log holds {log_rows} rows, expected {n}")
    scopes = [s for s in await redis.smembers(SCOPES_KEY) if s.startswith("p:")]
    totals = await WindowReader(redis).read(scopes, int(time.time()))
    day = tuple(sum(t["day"][f] for t in totals.values()) for f in ("req", "tin", "tout"))
    if day != (n, *tokens):  # every synthetic event has a provider and is recent
        raise BenchError(f"the Redis day windows count {day} (requests, tokens in, tokens out), "
                         f"expected {(n, *tokens)}")
    _say(f"verified: {n:,} events once in usage_events, usage_minute and request_log agree, Redis day windows "
         f"count {day[0]:,} requests and every token")


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}, Python {platform.python_version()}, {platform.system()}"


def median_run(results: list[IngestResult]) -> IngestResult:
    """The run with the median rate (the lower middle one of an even count)."""
    ranked = sorted(results, key=lambda r: r.events_per_s)
    return ranked[(len(ranked) - 1) // 2]


def results_section(results: list[IngestResult], when: dt.datetime) -> str:
    mid = median_run(results)
    rows = [f"| {i} | {r.events:,} | {r.batch_size} / {r.batch_wait_s}s | {r.batches:,} | {r.ingest_s:.1f}s "
            f"| **{r.events_per_s:,.0f}** | {r.publish_s:.1f}s | {r.load_before} |" for i, r in enumerate(results, 1)]
    return "\n".join([
        SECTION_START,
        "### Latest results",
        "",
        f"Run {when:%Y-%m-%d %H:%M} UTC on {machine()}: {len(results)} run(s), each on fresh servers; "
        f"**median {mid.events_per_s:,.0f} events/s** (range {min(r.events_per_s for r in results):,.0f} to "
        f"{max(r.events_per_s for r in results):,.0f}).",
        "",
        "| run | events | batch size / wait | batches | ingest time | **events/s (end to end)** | publish time "
        "| load average before |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "CPU used during the ingest of the median run, per process: " + ", ".join(
            f"{name} {sec:.1f}s ({1e6 * sec / mid.events:.0f} µs/event)" for name, sec in mid.cpu_s.items()) + ".",
        "",
        "Ingest: from the consumer's start until every event is committed (ClickHouse insert with the",
        "`usage_minute` and `request_log` views, Redis windows) and acknowledged. Publishing (pipelined",
        "`publish_async`, before the consumer starts) is shown for reference only; a slow publish means",
        "a slow machine during that run. The servers, chDB and the consumer share the machine's CPUs;",
        "compare runs made on the same, otherwise idle machine.",
        SECTION_END,
    ])


def replace_section(document: str, section: str) -> str:
    start, end = document.find(SECTION_START), document.find(SECTION_END)
    if start != -1 and end > start:
        return document[:start] + section + document[end + len(SECTION_END):]
    return document.rstrip("\n") + "\n" + SECTION_INTRO + "\n" + section + "\n"


def _one_run(args: argparse.Namespace) -> IngestResult:
    root = Path(tempfile.mkdtemp(prefix="llmgw-bench-ingest-"))
    thresholds = gc.get_threshold()
    try:
        return uvloop.run(_run(args, root))  # the event loop the usage service runs on
    finally:
        gc.unfreeze()  # the run tuned the collector as the usage service does; this process goes on
        gc.set_threshold(*thresholds)
        if args.keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    if args.events <= 0 or args.runs <= 0:
        _say("--events and --runs must be positive")
        return 2
    results: list[IngestResult] = []
    try:
        for i in range(1, args.runs + 1):
            if args.runs > 1:
                _say(f"--- run {i} of {args.runs}")
            result = _one_run(args)
            results.append(result)
            print(f"run {i}: ingested {result.events:,} events in {result.ingest_s:.1f}s: "
                  f"{result.events_per_s:,.0f} events/s end to end (batch size {result.batch_size}; "
                  f"publishing took {result.publish_s:.1f}s)")
            print("  CPU during the ingest: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in result.cpu_s.items()))
    except BenchError as exc:
        _say(f"bench-ingest failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    mid = median_run(results)
    print(f"median of {len(results)}: {mid.events_per_s:,.0f} events/s")
    if not args.no_write:
        path = Path(args.output)
        document = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(replace_section(document, results_section(results, dt.datetime.now(dt.timezone.utc))))
        _say(f"results written to {path}")
    return 0
