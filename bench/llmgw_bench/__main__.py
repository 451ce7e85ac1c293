"""``python -m llmgw_bench`` (``make bench``): the gateway beside its peers (``--peers``) or its upstream
called directly; ``python -m llmgw_bench ingest``: the usage ingest's throughput."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from llmgw_bench.harness import DEFAULT_OUTPUT, BenchError, ChildProcesses, raise_interrupt, tail
from llmgw_bench.quick import run_quick


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
        print("the benchmark needs wrk, the HTTP load generator: install it with `apt-get install wrk` "
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
        previous_sigterm = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: rely on the caller
        previous_sigterm = None
    keep_state = True  # for a post-mortem, unless the run ended normally or was interrupted
    try:
        if getattr(args, "peers", False):
            from llmgw_bench.peers import run_peers  # its imports only when it runs

            code = run_peers(args, state_dir, children)
        else:
            code = run_quick(args, state_dir, children)
        keep_state = False
        return code
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        for log in sorted(state_dir.glob("*.log")):
            print(f"--- last lines of {log} ---\n{tail(log)}", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ingest"]:
        from llmgw_bench import ingest

        parser = argparse.ArgumentParser(prog="python -m llmgw_bench ingest", description=ingest.__doc__)
        ingest.add_arguments(parser)
        return ingest.cmd_bench_ingest(parser.parse_args(argv[1:]))
    if argv[:1] == ["redis"]:
        from llmgw_bench import redis_load

        return redis_load.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m llmgw_bench", description=__doc__,
                                     epilog="python -m llmgw_bench ingest --help: the usage ingest benchmark")
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
