"""``llmgw keys``: create, list, show, rotate and revoke gateway API keys.

Talks to the key store (the JetStream key-value bucket) over NATS, like every
other CLI command: ``--nats-url``, else ``NATS_URL``, else the NATS a running
``llmgw run`` wrote into its state dir (``runtime.py``); never a server found
any other way. The bucket is looked up, never created (the gateway's services
create it): a NATS without it is not the gateway's. A new or rotated secret is
printed once, on standard output (everything else goes to standard error), so
``llmgw keys create --name ci > key.txt`` captures just the secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from llmgw_common.keys import KEYS_BUCKET, KeyLimits, KeyRecord, KeyStore, parse_budget

from . import runtime

_LIMIT_FLAGS = (("--rpm", "requests_per_minute", "requests per minute"),
                ("--rph", "requests_per_hour", "requests per hour"),
                ("--rpd", "requests_per_day", "requests per day"),
                ("--tpm", "tokens_per_minute", "tokens per minute"),
                ("--tpd", "tokens_per_day", "tokens per day"),
                ("--tokens-per-month", "tokens_per_month", "tokens per calendar month"),
                ("--requests-per-month", "requests_per_month", "requests per calendar month"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=None, help="NATS of the gateway (default: NATS_URL, or the one "
                                                         "`llmgw run` started, found in --state-dir)")
    parser.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"),
                        help="state directory of a running `llmgw run` (env LLMGW_STATE_DIR; default .state)")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("--name", required=True, help="who or what uses it (team-a, ci, ...)")
    create.add_argument("--budget", action="append", default=[], metavar="USD/PERIOD",
                        help="spend limit, e.g. 50/month or 5/day (repeatable)")
    for flag, field, what in _LIMIT_FLAGS:
        create.add_argument(flag, type=int, dest=field, metavar="N", help=f"at most N {what}")
    create.add_argument("--models", default="", help="comma-separated globs, e.g. 'gpt-*,claude-*' (default: all)")
    create.add_argument("--providers", default="", help="comma-separated provider ids (default: all)")
    create.add_argument("--expires-in-days", type=float, default=None, metavar="DAYS",
                        help="the key stops working after this many days (default: never)")
    create.set_defaults(keys_func=_create)

    # list and show print the same thing: one line per key, or with --json the same fields as JSON
    listing = sub.add_parser("list", help="every key (never a secret)")
    listing.add_argument("--json", action="store_true", help="a JSON array of keys (the fields of `show --json`)")
    listing.set_defaults(keys_func=_list)
    show = sub.add_parser("show", help="one key (never its secret)")
    show.add_argument("key_id", help="the key's id (first on its line in `llmgw keys list`)")
    show.add_argument("--json", action="store_true", help="the key as a JSON object (the fields of `list --json`)")
    show.set_defaults(keys_func=_show)
    for name, helptext, func in (("rotate", "a new secret for a key; the old one stops working", _rotate),
                                 ("revoke", "the key stops working on every edge within a second", _revoke)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("key_id", help="the key's id (first on its line in `llmgw keys list`)")
        p.set_defaults(keys_func=func)


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_with_store(args))
    except ValueError as exc:
        print(f"llmgw keys: {exc}", file=sys.stderr)
        return 2


async def _with_store(args: argparse.Namespace) -> int:
    url = runtime.nats_url(args.nats_url, args.state_dir)
    nc = await runtime.connect_nats(url, "llmgw-keys")
    try:
        store = KeyStore(await _keys_bucket(nc.jetstream(), url))
        return await args.keys_func(store, args)
    finally:
        await nc.close()


async def _keys_bucket(js, url: str):
    """The gateway's key bucket, looked up: created by the services, never by this command (on a NATS that
    is not the gateway's it would stay behind, and "no keys" would be a lie)."""
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(KEYS_BUCKET)
    except BucketNotFoundError:
        why = f"no key store (JetStream bucket {KEYS_BUCKET})"
    except Exception as exc:  # noqa: BLE001 - no JetStream there, or it does not answer
        why = f"no JetStream answers ({str(exc).strip() or type(exc).__name__})"
    raise runtime.NotRunning(f"the NATS at {runtime.shown(url)} is not the gateway's: {why}. The gateway's "
                             "services create the key store when they start (make run); or set NATS_URL to "
                             "the gateway's NATS")


def _limits(args: argparse.Namespace) -> KeyLimits:
    values: dict = {}
    for budget in args.budget:
        values.update(parse_budget(budget))
    for _flag, field, _what in _LIMIT_FLAGS:
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
    if args.json:
        print(json.dumps([record.public() for record in records], indent=2, ensure_ascii=False))
    else:
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
    print(json.dumps(record.public(), indent=2, ensure_ascii=False) if args.json else _describe(record))
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
