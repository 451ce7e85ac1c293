"""The ``llmgw`` command: run everything, run one service, check / push / pull a config, manage keys and the
usage stream.

The benchmarks are not part of it: ``make bench`` runs ``python -m llmgw_bench`` (bench/)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runtime import NotRunning

SERVICE_ENTRY = {
    "edge": "llmgw_edge.main",
    "router": "llmgw_router.main",
    "usage": "llmgw_usage.main",
    "pricing": "llmgw_pricing.main",
    "ui-api": "llmgw_ui_api.main",
}
PORT_ENV = {"edge": ("LLMGW_EDGE_HOST", "LLMGW_EDGE_PORT"), "ui-api": ("LLMGW_UI_HOST", "LLMGW_UI_PORT")}


def _config_default() -> str:
    return os.environ.get("LLMGW_CONFIG", "llmgw.yaml")


def _demo_port() -> int:
    """18090 (or LLMGW_DEMO_PORT) unless something already listens there."""
    from .infra import free_port, port_is_free

    wanted = int(os.environ.get("LLMGW_DEMO_PORT", 18090))
    return wanted if port_is_free(wanted) else free_port()


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_stack
    from .starter import starter_config

    config_path = Path(args.config)
    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(starter_config(os.environ, demo_port=_demo_port()))
        print(f"wrote a starter config to {config_path}", flush=True)
    from .infra import InfraError
    from .runner import ConfigProblem, parse_replicas, read_config

    try:  # checked by a child process: the supervisor does not keep the config schema in memory
        read_config(config_path)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return 2

    try:
        replicas = parse_replicas(args.replicas)
    except InfraError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_stack(config_path, Path(args.state_dir), args.edge_port, args.ui_port, args.host, replicas)


def cmd_service(args: argparse.Namespace) -> int:
    import importlib

    if args.service in PORT_ENV:
        host_env, port_env = PORT_ENV[args.service]
        if args.host:
            os.environ[host_env] = args.host
        if args.port:
            os.environ[port_env] = str(args.port)
    from llmgw_common.lean_imports import import_nats

    import_nats()  # before the service imports it: without aiohttp, which only the edge uses itself
    importlib.import_module(SERVICE_ENTRY[args.service]).run()
    return 0


def cmd_demo_provider(args: argparse.Namespace) -> int:
    from llmgw_demo_provider.main import run

    run(["--host", args.host, "--port", str(args.port)])
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``llmgw`` parser. Given the command about to run, only that command's own arguments are added:
    the modules defining the others (the usage-stream tools, ``keys``, ``copilot``) import httpx, yaml
    and the config schema, which every service process (``llmgw <service>``) would otherwise carry."""
    full = command is None

    def wanted(name: str) -> bool:
        return full or command == name

    parser = argparse.ArgumentParser(prog="llmgw", description="LLM Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every service plus embedded NATS/Redis/ClickHouse on this machine")
    run.add_argument("--config", default=_config_default(), help="config file (written if missing)")
    run.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--edge-port", type=int, default=int(os.environ.get("LLMGW_EDGE_PORT", 8080)))
    run.add_argument("--ui-port", type=int, default=int(os.environ.get("LLMGW_UI_PORT", 8081)))
    run.add_argument("--replicas", default="", metavar="SERVICE=N,...",
                     help="several processes of a service, e.g. edge=2,router=2,pricing=2 (edges share the port; "
                          "usage needs CLICKHOUSE_URL for more than one)")
    run.set_defaults(func=cmd_run)

    for name in SERVICE_ENTRY:
        p = sub.add_parser(name, help=f"run the {name} service alone (settings from the environment)")
        p.set_defaults(func=cmd_service, service=name)
        if name in PORT_ENV:
            p.add_argument("--host")
            p.add_argument("--port", type=int)

    demo = sub.add_parser("demo-provider", help="run the local demo OpenAI-compatible provider")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=18090)
    demo.set_defaults(func=cmd_demo_provider)

    config = sub.add_parser("config", help="config tools: check a file; push, pull, diff the running config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    if wanted("config"):
        from . import config_cmd  # the config bucket (llmgw_common.config_bucket) and the file

        config_cmd.add_arguments(config_sub)

    # commands a service provides itself (its `subcommands` module): the usage stream's replay and NDJSON export /
    # import and the ClickHouse migrations (llmgw_usage), the Copilot login (llmgw_edge)
    replay = sub.add_parser("replay", help="rebuild the ClickHouse and/or Redis projections from the usage stream")
    events_parser = sub.add_parser("events", help="usage events as NDJSON: export / import")
    if wanted("replay") or wanted("events"):
        from llmgw_usage import subcommands as usage_subcommands

        usage_subcommands.add_replay_arguments(replay)
        replay.set_defaults(func=usage_subcommands.cmd_replay)
        usage_subcommands.add_events_arguments(events_parser)
    migrate = sub.add_parser("migrate", help="apply the usage service's ClickHouse migrations (a one-shot job)")
    if wanted("migrate"):
        from llmgw_usage import subcommands as usage_subcommands

        usage_subcommands.add_migrate_arguments(migrate)
    copilot = sub.add_parser("copilot", help="GitHub Copilot subscriptions: login")
    if wanted("copilot"):
        from llmgw_edge import subcommands as edge_subcommands  # `llmgw copilot login`: the GitHub device flow

        edge_subcommands.add_arguments(copilot)
    keys = sub.add_parser("keys", help="gateway API keys: create, list, rotate, revoke")
    if wanted("keys"):
        from . import keys_cmd  # `llmgw keys`: gateway API keys in the key store (NATS key-value bucket)

        keys_cmd.add_arguments(keys)
        keys.set_defaults(func=keys_cmd.cmd_keys)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, or None (help, or not a command: the full parser answers)."""
    first = argv[0] if argv else ""
    return None if first.startswith("-") or first not in _COMMANDS else first


_COMMANDS = {"run", *SERVICE_ENTRY, "demo-provider", "config", "replay", "events", "migrate", "copilot", "keys"}


def _usage_stream_command(args: argparse.Namespace) -> int:
    """``replay`` / ``events`` (the usage service's own subcommands) against the gateway this machine runs:
    the URLs not given on the command line are the environment's, else the running ``llmgw run``'s."""
    from llmgw_common.nats_conn import NatsUnreachable

    from . import runtime

    args.nats_url = runtime.nats_url(args.nats_url, args.state_dir)
    if hasattr(args, "redis_url"):
        args.redis_url = runtime.redis_url(args.redis_url, args.state_dir)
    try:
        return args.func(args)
    except NatsUnreachable as exc:
        raise runtime.not_running(exc) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        code = _usage_stream_command(args) if args.command in ("replay", "events") else args.func(args)
    except NotRunning as exc:  # a command that needs the gateway: one line, no traceback
        print(f"llmgw {args.command}: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
