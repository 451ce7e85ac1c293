"""``llmgw demo-provider`` / ``python -m llmgw_demo_provider.main``: serve the demo provider."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app
from .behaviour import Behaviour


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--models", default="demo-chat", help="comma-separated model ids to serve")
    parser.add_argument("--delay-s", type=float, default=0.0, help="wait before each response / first chunk")
    parser.add_argument("--chunk-delay-s", type=float, default=0.0, help="wait between streamed chunks")
    parser.add_argument("--log-level", default="info")


def serve(args: argparse.Namespace) -> None:
    behaviour = Behaviour(models=[m.strip() for m in args.models.split(",") if m.strip()],
                          delay_s=args.delay_s, chunk_delay_s=args.chunk_delay_s)
    # uvloop + httptools and no access log: this server is the benchmark's upstream.
    uvicorn.run(create_app(behaviour), host=args.host, port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level=args.log_level, lifespan="off")


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmgw demo-provider", description=__doc__)
    add_arguments(parser)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    run()
