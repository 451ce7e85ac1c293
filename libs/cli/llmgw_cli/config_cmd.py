"""``llmgw config``: check a config file, and move the gateway's config between a file and its config bucket.

- ``check FILE``: every problem of the file, one per line as ``FILE:LINE: path: message``; exit 1 on errors
  (warnings alone, such as an unset ``${VAR}``, still exit 0).
- ``push FILE``: the same check first (invalid: the problems, exit 1, nothing changes), then the file's
  text as the new revision of the running gateway's config (the GitOps path); every service applies it.
- ``pull [FILE]``: the current revision's text, to stdout or into FILE.
- ``diff FILE``: a unified diff of the current revision against FILE (exit 1 when they differ, like diff).

The gateway is found like ``llmgw keys`` does (``--nats-url``, ``NATS_URL``, or the ``runtime.json`` of a
running ``llmgw run``). These commands never create the config bucket: the gateway's services create it
when they start, so a NATS without it is not a gateway's, and push refuses. While the bucket holds no
config yet, push stores the file as its first revision (the seed rule: a KV create).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
from pathlib import Path

from . import runtime


def add_arguments(config_sub) -> None:
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
    push = config_sub.add_parser("push", help="validate a config file and make it the running gateway's config")
    push.add_argument("file")
    pull = config_sub.add_parser("pull", help="the running gateway's config (stdout, or into FILE)")
    pull.add_argument("file", nargs="?")
    diff = config_sub.add_parser("diff", help="unified diff of the running gateway's config against FILE")
    diff.add_argument("file")
    for parser, func in ((push, _push), (pull, _pull), (diff, _diff)):
        parser.add_argument("--nats-url", default=None, help="NATS of the gateway (default: NATS_URL, or the one "
                                                             "`llmgw run` started, found in --state-dir)")
        parser.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"),
                            help="state directory of a running `llmgw run` (env LLMGW_STATE_DIR; default .state)")
        parser.set_defaults(func=cmd_bucket, config_func=func)


def _read(file: str) -> str | None:
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return None


def _report(file: str, text: str):
    """The check of ``config check``, printed the same way; the report."""
    from llmgw_common.config_check import check_text, plural

    report = check_text(text, os.environ)

    def where(finding) -> str:
        return f"{file}:{finding.line}" if finding.line is not None else file

    for finding in report.warnings:
        print(f"{where(finding)}: warning: {finding}", file=sys.stderr)
    for finding in report.errors:
        print(f"{where(finding)}: {finding}", file=sys.stderr)
    if report.config is None:
        warned = f", {plural(len(report.warnings), 'warning')}" if report.warnings else ""
        print(f"{file}: invalid ({plural(len(report.errors), 'error')}{warned})", file=sys.stderr)
    return report


def cmd_check(args: argparse.Namespace) -> int:
    from llmgw_common.config_check import plural, summary

    text = _read(args.file)
    if text is None:
        return 1
    report = _report(args.file, text)
    if report.config is None:
        return 1
    warned = f", {plural(len(report.warnings), 'warning')}" if report.warnings else ""
    print(f"{args.file}: OK ({summary(report.config)}{warned})")
    return 0


def cmd_bucket(args: argparse.Namespace) -> int:
    return asyncio.run(_with_bucket(args))


async def _with_bucket(args: argparse.Namespace) -> int:
    url = runtime.nats_url(args.nats_url, args.state_dir)
    nc = await runtime.connect_nats(url, "llmgw-config")
    try:
        return await args.config_func(await _config_bucket(nc.jetstream(), url), args)
    finally:
        await nc.close()


async def _config_bucket(js, url: str):
    """The gateway's config bucket, looked up: created by the services, never by this command."""
    from llmgw_common.config_bucket import CONFIG_BUCKET, open_bucket

    try:
        kv = await open_bucket(js, create=False)
        why = f"no config bucket (JetStream bucket {CONFIG_BUCKET})"
    except Exception as exc:  # noqa: BLE001 - no JetStream there, or it does not answer
        kv, why = None, f"no JetStream answers ({str(exc).strip() or type(exc).__name__})"
    if kv is None:
        raise runtime.NotRunning(f"the NATS at {runtime.shown(url)} is not the gateway's: {why}. The gateway's "
                                 "services create it when they start (make run); or set NATS_URL to the "
                                 "gateway's NATS")
    return kv


async def _push(kv, args: argparse.Namespace) -> int:
    from nats.js.errors import KeyWrongLastSequenceError

    from llmgw_common import config_bucket

    text = _read(args.file)
    if text is None:
        return 1
    if _report(args.file, text).config is None:
        print(f"{args.file}: not pushed, the running config is unchanged", file=sys.stderr)
        return 1
    stored = await config_bucket.current(kv)
    if stored is not None and stored.text == text:
        print(f"{args.file}: already the running config (revision {stored.revision})")
        return 0
    try:
        revision = await config_bucket.write(kv, text, last=stored.revision if stored else 0)
    except KeyWrongLastSequenceError:
        print(f"{args.file}: not pushed: the config changed meanwhile (another editor); pull or diff, then "
              "push again", file=sys.stderr)
        return 1
    print(f"{args.file}: pushed as revision {revision}")
    return 0


async def _stored_or_say(kv):
    from llmgw_common import config_bucket

    stored = await config_bucket.current(kv)
    if stored is None:
        print("the gateway has no config stored yet (it runs the defaults): push one", file=sys.stderr)
    return stored


async def _pull(kv, args: argparse.Namespace) -> int:
    from llmgw_common.files import write_atomically

    stored = await _stored_or_say(kv)
    if stored is None:
        return 1
    if not args.file:
        sys.stdout.write(stored.text)
        return 0
    # private: a config may hold literal secrets
    await asyncio.to_thread(write_atomically, Path(args.file), stored.text.encode("utf-8"), mode=0o600)
    print(f"{args.file}: revision {stored.revision} written", file=sys.stderr)
    return 0


async def _diff(kv, args: argparse.Namespace) -> int:
    stored = await _stored_or_say(kv)
    text = _read(args.file)
    if stored is None or text is None:
        return 2
    lines = difflib.unified_diff(stored.text.splitlines(keepends=True), text.splitlines(keepends=True),
                                 fromfile=f"revision {stored.revision}", tofile=args.file)
    out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    sys.stdout.write(out)
    return 1 if out else 0
