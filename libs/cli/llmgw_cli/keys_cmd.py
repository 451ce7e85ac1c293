"""``llmgw keys``: create, list, rotate and revoke gateway API keys.

Talks to the key store (the JetStream key-value bucket) over NATS, like every
other CLI command: ``--nats-url``, else ``NATS_URL``, else the URL a running
``llmgw run`` wrote into its state dir, else the default port. A new or
rotated secret is printed once, on standard output (everything else goes to
standard error), so ``llmgw keys create --name ci > key.txt`` captures just
the secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from llmgw_common.keys import KeyLimits, KeyRecord, KeyStore, parse_budget

from . import runtime

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=None, help="NATS of the gateway (default: NATS_URL, or the one "
                                                         "`llmgw run` started, found in --state-dir)")
    parser.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"))
    sub = parser.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("--name", required=True, help="who or what uses it (team-a, ci, ...)")
    create.add_argument("--budget", action="append", default=[], metavar="USD/PERIOD",
                        help="spend limit, e.g. 50/month or 5/day (repeatable)")
    for flag, field in (("--rpm", "requests_per_minute"), ("--rph", "requests_per_hour"),
                        ("--rpd", "requests_per_day"), ("--tpm", "tokens_per_minute"),
                        ("--tpd", "tokens_per_day"), ("--tokens-per-month", "tokens_per_month"),
                        ("--requests-per-month", "requests_per_month")):
        create.add_argument(flag, type=int, dest=field, metavar="N")
    create.add_argument("--models", default="", help="comma-separated globs, e.g. 'gpt-*,claude-*' (default: all)")
    create.add_argument("--providers", default="", help="comma-separated provider ids (default: all)")
    create.add_argument("--expires-in-days", type=float, default=None)
    create.set_defaults(keys_func=_create)

    sub.add_parser("list", help="every key (never a secret)").set_defaults(keys_func=_list)
    for name, helptext, func in (("rotate", "a new secret for a key; the old one stops working", "_rotate"),
                                 ("revoke", "the key stops working on every edge within a second", "_revoke"),
                                 ("show", "one key", "_show")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("key_id")
        p.set_defaults(keys_func=globals()[func])


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_with_store(args))
    except ValueError as exc:
        print(f"llmgw keys: {exc}", file=sys.stderr)
        return 2


async def _with_store(args: argparse.Namespace) -> int:
    import nats

    url = runtime.nats_url(args.nats_url, args.state_dir)
    try:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception as exc:
        print(f"llmgw keys: cannot reach NATS at {url} ({type(exc).__name__}); is the gateway running? "
              "Pass --nats-url or NATS_URL.", file=sys.stderr)
        return 1
    try:
        store = await KeyStore.open(nc.jetstream())
        return await args.keys_func(store, args)
    finally:
        await nc.close()


def _limits(args: argparse.Namespace) -> KeyLimits:
    values: dict = {}
    for budget in args.budget:
        values.update(parse_budget(budget))
    for field in ("requests_per_minute", "requests_per_hour", "requests_per_day", "tokens_per_minute",
                  "tokens_per_day", "tokens_per_month", "requests_per_month"):
        if getattr(args, field, None) is not None:
            values[field] = getattr(args, field)
    return KeyLimits(**values)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _describe(record: KeyRecord) -> str:
    limits = {k: str(v) for k, v in record.limits.model_dump(exclude_none=True).items()}
    state = "revoked" if record.revoked_at else "expired" if not record.usable() else "active"
    return (f"{record.id}  {record.name}  {record.prefix}  {state}  models={','.join(record.models) or '*'}  "
            f"providers={','.join(record.providers) or '*'}  limits={json.dumps(limits) if limits else 'none'}")


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    expires = (datetime.now(timezone.utc) + timedelta(days=args.expires_in_days)
               if args.expires_in_days is not None else None)
    record, secret = await store.create(args.name, models=_split(args.models), providers=_split(args.providers),
                                        limits=_limits(args), expires_at=expires)
    print(f"created {_describe(record)}", file=sys.stderr)
    print("the secret is shown once, now; keep it (only its hash is stored):", file=sys.stderr)
    print(secret)
    return 0


async def _list(store: KeyStore, args: argparse.Namespace) -> int:
    records = await store.list()
    for record in records:
        print(_describe(record))
    if not records:
        print("no keys: the gateway answers every client (see README, Gateway keys)", file=sys.stderr)
    return 0


async def _show(store: KeyStore, args: argparse.Namespace) -> int:
    record = await store.get(args.key_id)
    if record is None:
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    print(json.dumps(record.public(), indent=2))
    return 0


async def _rotate(store: KeyStore, args: argparse.Namespace) -> int:
    rotated = await store.rotate(args.key_id)
    if rotated is None:
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    record, secret = rotated
    print(f"rotated {_describe(record)}; the old secret no longer works. New secret (shown once):",
          file=sys.stderr)
    print(secret)
    return 0


async def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    record = await store.revoke(args.key_id)
    if record is None:
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {_describe(record)}", file=sys.stderr)
    return 0
