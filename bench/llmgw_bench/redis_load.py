"""``python -m llmgw_bench redis``: where a limited route's Redis commands per request come from.

Starts the demo provider and the gateway (``llmgw run``) with the peer benchmark's limited route (1,000,000
requests a minute; ``routing.leases`` on unless ``--no-leases``), warms up, then drives ``wrk`` at
concurrency 10 and reads ``INFO commandstats`` before and after: every command per request, scripts'
included. Over the same interval it listens with ``MONITOR`` and charges each command to the script that ran it (a script is known by its SHA1: the gateway's scripts are hashed here the way
redis-py registers them) or, outside scripts, to its own name: which service's work it is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from llmgw_bench.harness import ChildProcesses, start_demo_provider
from llmgw_bench.peers import LIMITED_PER_MINUTE, _wait_answer, start_gateway
from llmgw_bench.redis_stats import OWN_COMMANDS, gateway_redis_url, read_calls
from llmgw_bench.wrk import run_wrk, write_wrk_script
from llmgw_cli.infra import free_port

_LINE = re.compile(r'^[\d.]+ \[\d+ (?P<who>[^\]]+)\] "(?P<command>[^"]+)"(?: "(?P<first>[^"]*)")?')


def known_scripts() -> dict[str, str]:
    """SHA1 -> the script's name, for every Lua script the services register."""
    from llmgw_common import redis_keys
    from llmgw_router import capacity_leases, store
    from llmgw_usage import domain

    scripts: dict[str, str] = {}
    for module, prefix in ((store, "router"), (capacity_leases, "router"), (domain, "usage")):
        for name, value in vars(module).items():
            if name.endswith("_LUA") and isinstance(value, str):
                text = redis_keys.lua(value)
                scripts[hashlib.sha1(text.encode()).hexdigest()] = f"{prefix} {name}"
    return scripts


def charge(lines: list[str], scripts: dict[str, str]) -> Counter[str]:
    """Commands seen by MONITOR, by what ran them: a script's own commands (``lua``) follow the line of the
    ``EVALSHA`` that ran them."""
    charged: Counter[str] = Counter()
    running = "script ?"  # lua lines before the first script line seen: one that started earlier
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        command = m["command"].lower()
        if m["who"] == "lua":
            charged[f"{running}: commands inside"] += 1
        elif command in ("evalsha", "eval"):
            running = scripts.get(m["first"] or "", f"script {(m['first'] or '?')[:8]}")
            charged[f"{running}: runs"] += 1
        elif command not in OWN_COMMANDS and command != "monitor":
            charged[" ".join(filter(None, (command, (m["first"] or "").lower() if command == "script" else "")))] += 1
    return charged


def monitor(url: str, listening: threading.Event, stop: threading.Event, out: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    connection = client.connection_pool.get_connection("MONITOR")
    try:
        connection.send_command("MONITOR")
        connection.read_response()  # OK
        listening.set()
        while not stop.is_set():
            if connection.can_read(timeout=0.1):
                out.append(str(connection.read_response()))
    finally:
        connection.disconnect()
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmgw_bench redis", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, metavar="S", help="seconds of measured load (5)")
    parser.add_argument("--no-leases", action="store_true", help="per-request admission (routing.leases off)")
    parser.add_argument("--no-monitor", action="store_true",
                        help="commandstats only (MONITOR slows Redis, and the figures per request with it)")
    args = parser.parse_args(argv)
    state_dir = Path(tempfile.mkdtemp(prefix="llmgw-redis-load-"))
    children = ChildProcesses()
    try:
        upstream_port = free_port()
        start_demo_provider(children, state_dir, upstream_port)
        system = start_gateway(children, state_dir, upstream_port, None, LIMITED_PER_MINUTE,
                               leases=not args.no_leases)
        _wait_answer(system.url, system.headers, system.proc, 60, "the gateway")
        url = gateway_redis_url(system.state_dir) if system.state_dir else None
        if url is None:
            print("the gateway's Redis could not be found")
            return 1
        script = state_dir / "chat.lua"
        write_wrk_script(script)
        run_wrk(system.url, script, 10, 2, 2, system.headers)  # warm-up: leases granted, plans cached
        time.sleep(1)
        lines: list[str] = []
        listening, stop = threading.Event(), threading.Event()
        listener = threading.Thread(target=monitor, args=(url, listening, stop, lines))
        if not args.no_monitor:
            listener.start()
            listening.wait(10)
        before = read_calls(url)
        run = run_wrk(system.url, script, 10, 2, args.duration, system.headers)
        time.sleep(1)  # the last outcomes and usage events reach Redis
        after = read_calls(url)
        stop.set()
        if not args.no_monitor:
            listener.join()
        assert before is not None and after is not None
        commands, scripts = (after - before).per_request(run.requests)
        print(f"leases {'off' if args.no_leases else 'on'}: {run.requests:,} requests at c=10 "
              f"({run.requests_per_s:,.0f}/s, {run.errors} errors): {commands:.2f} Redis commands and "
              f"{scripts:.3f} script runs per request, {(after - before).commands / (args.duration + 1):,.0f} "
              f"commands/s (INFO commandstats"
              + ("" if args.no_monitor else "; MONITOR on, which slows Redis") + ")")
        if args.no_monitor:
            return 0
        if os.environ.get("LLMGW_MONITOR_DUMP"):
            Path(os.environ["LLMGW_MONITOR_DUMP"]).write_text("\n".join(lines))
        print("per request, by what ran them (MONITOR over the same run):")
        for name, count in sorted(charge(lines, known_scripts()).items(), key=lambda kv: -kv[1]):
            print(f"  {count / run.requests:8.3f}  {name}  ({count:,})")
        return 0
    finally:
        children.stop_all()
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
