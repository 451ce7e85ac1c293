"""The usage service's own commands, ``llmgw replay`` and ``llmgw events export|import``: the usage stream as
the system of record; and ``llmgw migrate`` (``migrate.py``).

- ``replay`` rebuilds the ClickHouse and/or Redis projections from the stream
  over a time range; running it twice changes nothing (see
  ``llmgw_usage.replay``). ClickHouse goes through the running usage service
  when one answers (it owns a chDB directory), else this process opens
  ClickHouse itself (a server, or a chDB directory nobody holds).
- ``events export`` writes the range as NDJSON (one event per line) to stdout.
- ``events import FILE`` validates every line as a ``UsageEvent``, reports
  bad lines with their numbers, skips them, and publishes the good ones to
  the stream with ``Nats-Msg-Id`` = event id. The projections skip events
  they already hold, so importing the same file twice counts nothing twice.

Connections come from ``--nats-url`` / ``--redis-url`` / ``--clickhouse-url``
/ ``--state-dir`` or the same environment variables the services read, else
from a running ``llmgw run`` (the ``llmgw`` command finds it, in its runtime.json, before these run);
never from a default port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from llmgw_common.config import mask_url

from .progress import Progress

PUBLISH_WINDOW = 2000  # publishes in flight before waiting for their acks


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_connection_arguments(p: argparse.ArgumentParser, redis: bool = True, clickhouse: bool = True) -> None:
    p.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"),
                   help="state directory of the gateway: where `llmgw run` says where its servers are, and "
                        "chDB keeps its data (<state-dir>/clickhouse) (env LLMGW_STATE_DIR)")
    p.add_argument("--nats-url", default=None,
                   help="NATS server with the usage stream (default: NATS_URL, else the one a running "
                        "`llmgw run` started, found in --state-dir)")
    if redis:
        p.add_argument("--redis-url", default=None,
                       help="Redis of the live windows (default: REDIS_URL, else the running `llmgw run`'s)")
    if clickhouse:
        p.add_argument("--clickhouse-url", default=os.environ.get("CLICKHOUSE_URL", ""),
                       help="ClickHouse server (env CLICKHOUSE_URL); empty: chDB under --state-dir")


def _add_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="events whose own time is at or after this (ISO 8601, or relative: 90s, 15m, "
                                   "2h, 7d, 1w ago); default: from the beginning")
    p.add_argument("--until", help="events whose own time is before this (same forms); default: up to the end of "
                                   "the stream when it starts")


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    _add_range(p)
    p.add_argument("--target", choices=("clickhouse", "redis", "all"), default="all",
                   help="which projection to rebuild (default: all)")
    p.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
    p.add_argument("--batch-size", type=int, default=1000, help="events per write (default 1000)")
    add_connection_arguments(p)


def add_events_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="events_command", required=True)
    export = sub.add_parser("export", help="write the usage events of a time range as NDJSON to stdout")
    _add_range(export)
    add_connection_arguments(export, redis=False, clickhouse=False)
    export.set_defaults(func=cmd_export)
    imp = sub.add_parser("import", help="publish the usage events of an NDJSON file to the stream")
    imp.add_argument("file", help="NDJSON file, one UsageEvent per line ('-': stdin)")
    imp.add_argument("--config", default=os.environ.get("LLMGW_CONFIG", "llmgw.yaml"),
                     help="config whose usage limits create the stream if it does not exist yet")
    add_connection_arguments(imp, redis=False, clickhouse=False)
    imp.set_defaults(func=cmd_import)


def add_migrate_arguments(p: argparse.ArgumentParser) -> None:
    """``llmgw migrate``: the ClickHouse migrations as a one-shot job (its own module: no NATS, no config)."""
    from .migrate import add_arguments

    add_arguments(p)


async def _connect(url: str):
    from llmgw_common.nats_conn import connect_once  # here: ``llmgw migrate`` needs no NATS client

    return await connect_once(url, "llmgw-cli")  # NatsUnreachable: "the gateway is not running", from main


def _range_args(args) -> tuple:
    from llmgw_usage.replay import parse_when

    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return since, until


# ---- replay -------------------------------------------------------------------------

async def _usage_service_answers(nc) -> bool:
    try:
        await nc.request("$SRV.PING.usage", b"", timeout=1.5)
        return True
    except Exception:  # noqa: BLE001 - no responders, timeout
        return False


async def _replay(args) -> int:
    from llmgw_common.redis_conn import connect_redis
    from llmgw_usage.replay import DirectClickHouse, RedisWindows, RemoteClickHouse, ReplayError, replay, resolve_range

    since, until = _range_args(args)
    if args.batch_size <= 0:
        raise SystemExit("--batch-size must be positive")
    nc = await _connect(args.nats_url)
    redis = None
    targets: list = []
    try:
        js = nc.jetstream()
        rng = await resolve_range(js, since, until)
        wanted = ("clickhouse", "redis") if args.target == "all" else (args.target,)
        via_service = "clickhouse" in wanted and await _usage_service_answers(nc)

        async def need_redis():
            nonlocal redis
            if redis is None:
                if not args.redis_url:
                    raise ReplayError("no Redis to write to: the gateway is not running here (no runtime file "
                                      "in --state-dir); pass --redis-url or set REDIS_URL")
                redis = connect_redis(args.redis_url)
                try:
                    await redis.ping()
                except Exception as exc:  # noqa: BLE001
                    raise ReplayError(f"cannot reach Redis at {mask_url(args.redis_url)}: "
                                      f"{type(exc).__name__} (pass --redis-url or REDIS_URL)") from None
            return redis

        how = []
        if "clickhouse" in wanted:
            if via_service:
                targets.append(RemoteClickHouse(nc))
                how.append("clickhouse (through the running usage service)")
            else:
                chdb = Path(args.state_dir) / "clickhouse"
                targets.append(await DirectClickHouse.open(args.clickhouse_url, chdb, await need_redis()))
                how.append(f"clickhouse ({'server' if args.clickhouse_url else f'chDB in {chdb}'}, no usage "
                           "service answers)")
        if "redis" in wanted:
            targets.append(RedisWindows(await need_redis()))
            how.append("redis windows")
        _err(f"{'dry run: ' if args.dry_run else ''}replaying stream sequences {rng.start_seq}.."
             f"{rng.end_seq - 1} ({rng.total:,} events at most) into {', '.join(how)}")
        progress = Progress("replay", rng.total)
        stats = await replay(js, rng, targets, dry_run=args.dry_run, batch_size=args.batch_size,
                             on_progress=progress.update)
        progress.finish(stats.read)
    except ReplayError as exc:
        _err(f"replay: {exc}")
        return 2
    finally:
        for t in targets:
            with contextlib.suppress(Exception):
                await t.close()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        await nc.close()
    verb, already = ("would be new", "already there") if args.dry_run else ("new", "already there (unchanged)")
    outside = f"; {stats.outside:,} outside the time range" if rng.since or rng.until else ""
    _err(f"read {stats.read:,} events ({stats.unusable} unusable, skipped; {stats.duplicates} repeated ids{outside})")
    for name, t in stats.targets.items():
        extra = f", {t.skipped:,} older than every window or served by nobody" if name == "redis" else ""
        _err(f"  {name}: {t.new:,} {verb}, {t.already:,} {already}{extra}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    return asyncio.run(_replay(args))


# ---- export -------------------------------------------------------------------------

async def _export(args, out) -> int:
    from llmgw_usage.replay import ReplayError, decode, read_range, resolve_range

    since, until = _range_args(args)
    nc = await _connect(args.nats_url)
    written = skipped = outside = 0
    try:
        js = nc.jetstream()
        rng = await resolve_range(js, since, until)
        progress = Progress("export", rng.total)
        async for item in read_range(js, rng):
            progress.update(written + skipped + outside)
            ev, why = decode(item.data)
            if ev is None:
                skipped += 1
                _err(f"stream message {item.seq} skipped: {why}")
                continue
            if not rng.holds(ev):
                outside += 1
                continue
            line = item.data.strip()
            if b"\n" in line or b"\r" in line:  # valid JSON may span lines; NDJSON may not
                line = ev.encode()
            out.write(line + b"\n")
            written += 1
        out.flush()
        progress.finish(written + skipped + outside)
    except ReplayError as exc:
        _err(f"export: {exc}")
        return 2
    finally:
        await nc.close()
    outside_note = f", {outside:,} outside the time range" if since or until else ""
    _err(f"exported {written:,} events ({skipped} unusable skipped{outside_note})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    return asyncio.run(_export(args, sys.stdout.buffer))


# ---- import -------------------------------------------------------------------------

def validate_line(line: bytes):
    """(event, None) for a good line, (None, reason) for a bad one."""
    from llmgw_usage.replay import decode

    return decode(line)


async def _ensure_stream(js, config_path: str) -> None:
    from nats.js.errors import NotFoundError

    from llmgw_common import subjects
    from llmgw_common.config import load_config_or_default
    from llmgw_common.nats_conn import ensure_usage_stream

    try:
        await js.stream_info(subjects.USAGE_STREAM)
        return
    except NotFoundError:
        pass
    config = load_config_or_default(config_path)
    await ensure_usage_stream(js, max_age_s=config.usage.stream_max_age_days * 86400,
                              max_bytes=config.usage.stream_max_bytes)


async def _import(args, source) -> int:
    from llmgw_common import subjects

    nc = await _connect(args.nats_url)
    name = "<stdin>" if args.file == "-" else args.file
    bad = repeated = published = in_window = 0
    ids: set[str] = set()
    pending: list = []
    progress = Progress("import")

    async def settle() -> None:
        nonlocal published, in_window
        for ack in await asyncio.wait_for(asyncio.gather(*pending), 60):
            published += 1
            in_window += bool(ack.duplicate)
        pending.clear()
        progress.update(published)

    try:
        js = nc.jetstream()
        await _ensure_stream(js, args.config)
        for lineno, raw in enumerate(source, 1):
            line = raw.strip()
            if not line:
                continue
            ev, why = validate_line(line)
            if ev is None:
                bad += 1
                _err(f"{name}:{lineno}: skipped: {why}")
                continue
            if ev.id in ids:
                repeated += 1
                continue
            ids.add(ev.id)
            pending.append(await js.publish_async(subjects.usage_event_subject(ev.provider or "none"), line,
                                                  headers={"Nats-Msg-Id": ev.id}))
            if len(pending) >= PUBLISH_WINDOW:
                await settle()
        await settle()
        progress.finish(published)
    finally:
        await nc.close()
    _err(f"imported {published:,} events from {name}; {bad} bad lines skipped; {repeated} repeated ids skipped; "
         f"{in_window} were already in the stream's duplicate window. Events the projections already hold are "
         "skipped there: nothing is counted twice.")
    return 1 if bad else 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.file == "-":
        return asyncio.run(_import(args, sys.stdin.buffer))
    try:
        with open(args.file, "rb") as source:
            return asyncio.run(_import(args, source))
    except FileNotFoundError:
        _err(f"no such file: {args.file}")
        return 2
