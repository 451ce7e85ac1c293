"""The CLI's commands that talk to a running gateway (``llmgw keys``, ``replay``, ``events``): they find it
only through ``<state dir>/runtime.json`` or an explicit ``NATS_URL`` / ``--nats-url``, answer within
seconds with one line when it is not there, and never write to a NATS that is not the gateway's."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys

import pytest

from llmgw_cli.infra import NatsServer, free_port
from llmgw_cli.main import build_parser
from llmgw_cli.main import main as cli_main
from llmgw_common.keys import KEYS_BUCKET, KeyLimits, KeyStore

pytestmark = pytest.mark.integration

NOT_RUNNING = "the gateway is not running"


def _env_without_gateway() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL", "LLMGW_STATE_DIR")}


def _llmgw(cwd, env, *args: str) -> subprocess.CompletedProcess:
    # the timeout only bounds a hang (the bug: reconnecting forever); the command answers in about a second
    return subprocess.run([sys.executable, "-m", "llmgw_cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)


def _one_clear_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "", done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def unrelated_nats(tmp_path):
    """A NATS with JetStream that is not the gateway's (like a system NATS on the default port)."""
    server = NatsServer(tmp_path / "unrelated-nats", log_file=tmp_path / "unrelated-nats.log").start()
    try:
        asyncio.run(_until_jetstream(server.url))
        yield server
    finally:
        server.stop()


async def _until_jetstream(url: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    await nc.jetstream().account_info()
                    return
                except Exception:  # noqa: BLE001 - JetStream not up yet
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _streams(url: str) -> list[str]:
    """Every JetStream stream on the server (a key-value bucket is one: KV_<bucket>)."""
    import nats

    nc = await nats.connect(url)
    try:
        return [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_a_runtime_file_or_nats_url_every_command_says_the_gateway_is_not_running(tmp_path):
    env = _env_without_gateway()
    for args in (["keys", "list"], ["keys", "create", "--name", "x"], ["replay"], ["events", "export"]):
        _one_clear_line(_llmgw(tmp_path, env, *args), NOT_RUNNING, str(tmp_path / ".state" / "runtime.json"),
                        "make run", "NATS_URL")


def test_a_nats_that_does_not_answer_gets_one_line_in_seconds_not_endless_retries(tmp_path):
    dead = f"nats://ci:hunter2-secret@127.0.0.1:{free_port()}"  # nothing listens there
    env = _env_without_gateway()
    line = _one_clear_line(_llmgw(tmp_path, env, "keys", "--nats-url", dead, "list"), NOT_RUNNING, "make run")
    assert "hunter2-secret" not in line  # the password in the URL is not printed
    _one_clear_line(_llmgw(tmp_path, dict(env, NATS_URL=dead), "events", "export"), NOT_RUNNING)


def test_a_stale_runtime_file_or_an_unrelated_nats_is_never_used_nor_written(tmp_path, unrelated_nats):
    env = _env_without_gateway()
    # a runtime file left by a runner that is gone, naming a NATS that answers (not the gateway's any more)
    state = tmp_path / ".state"
    state.mkdir()
    (state / "runtime.json").write_text(json.dumps({"nats_url": unrelated_nats.url, "redis_url": "redis://x",
                                                    "pid": _dead_pid()}))
    _one_clear_line(_llmgw(tmp_path, env, "keys", "list"), NOT_RUNNING, "stale")
    _one_clear_line(_llmgw(tmp_path, env, "replay", "--target", "redis"), NOT_RUNNING, "stale")

    # given explicitly, it is used, but a NATS without the key bucket is not the gateway's: said so, not "no keys"
    for args in (["list"], ["list", "--json"], ["show", "k_x"], ["create", "--name", "x"]):
        done = _llmgw(tmp_path, dict(env, NATS_URL=unrelated_nats.url), "keys", *args)
        _one_clear_line(done, "not the gateway's", KEYS_BUCKET)
        assert "no keys" not in done.stderr
    assert asyncio.run(_streams(unrelated_nats.url)) == []  # nothing created there


# ---- llmgw keys: help and output formats -----------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_keys_subcommand_and_argument_has_help():
    keys_parser = _subparsers(build_parser("keys")).choices["keys"]
    parsers = {"keys": keys_parser}
    sub = _subparsers(keys_parser)
    helped = {choice.dest for choice in sub._choices_actions if choice.help}
    assert helped == set(sub.choices) == {"create", "list", "show", "rotate", "revoke"}
    parsers.update({f"keys {name}": p for name, p in sub.choices.items()})
    missing = [f"{where} {action.option_strings or action.dest}" for where, p in parsers.items()
               for action in p._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == []


async def _a_key_in_the_gateways_store(url: str) -> str:
    import nats

    nc = await nats.connect(url)
    try:  # what the gateway's services do: open (and so create) the bucket
        store = await KeyStore.open(nc.jetstream())
        record, _secret = await store.create("team-a", models=["gpt-*"], limits=KeyLimits(requests_per_minute=60))
        return record.id
    finally:
        await nc.close()


def _keys(url: str, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli_main(["keys", "--nats-url", url, *args])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return out.out


def test_keys_list_and_show_print_the_same_formats(unrelated_nats, capsys):
    url = unrelated_nats.url
    key_id = asyncio.run(_a_key_in_the_gateways_store(url))
    listed = json.loads(_keys(url, capsys, "list", "--json"))
    shown_text = _keys(url, capsys, "show", key_id, "--json")
    shown = json.loads(shown_text)
    assert "\\u" not in shown_text  # "…" in the masked key reads as itself, not as an escape
    assert listed == [shown] and shown["id"] == key_id and shown["limits"]["requests_per_minute"] == 60
    assert "hash" not in shown
    line = _keys(url, capsys, "show", key_id)
    assert line == _keys(url, capsys, "list") and line.startswith(key_id) and "team-a" in line
