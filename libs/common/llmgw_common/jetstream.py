"""The gateway's JetStream streams and key-value buckets: created when missing, never reset by a restart.

Every stream (usage, dead letters) and bucket (keys, config, sessions) is created by whichever process needs
it first, with ``LLMGW_NATS_REPLICAS`` replicas (unset: 1; 3 on a NATS cluster of three). Once it exists it
belongs to the operator: a process that starts compares it with what it would have created, warns about
each setting that differs, and changes only what it is explicitly asked to change:

- the replica count, when ``LLMGW_NATS_REPLICAS`` is set and differs (JetStream copies the data itself);
- the settings a caller owns (the usage stream's max age and size, which the gateway's config sets).

Everything else (a hand-made change with ``nats stream edit``, a limit an older release created) is left
as it is: before, each start re-applied the whole config and so reset an R3 stream to R1.

The buckets' watches (every process's view of the keys and the config) ask for a heartbeat every second, so
that on a cluster a watch whose node died is made again within seconds (``_WatchHeartbeats``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, cast

from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from .config import ConfigError

log = logging.getLogger("llmgw.jetstream")

REPLICAS_ENV = "LLMGW_NATS_REPLICAS"
MAX_REPLICAS = 5  # JetStream's own limit
WATCH_HEARTBEAT_S = 1.0  # a key-value watch whose node died is made again after two missed heartbeats

# the settings of a stream compared with what this process would create (all of them shape what it keeps;
# the replicas are the setting's alone)
STREAM_FIELDS = ("subjects", "retention", "storage", "discard", "max_age", "max_bytes", "max_msg_size",
                 "max_msgs_per_subject", "duplicate_window")


def replicas_setting(environ: Mapping[str, str] = os.environ) -> int | None:
    """``LLMGW_NATS_REPLICAS`` as a number; None when unset (create with 1, leave existing ones as they are).
    ``ConfigError`` naming the variable when it is not a replica count."""
    raw = environ.get(REPLICAS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_REPLICAS:
        raise ConfigError("environment", [(REPLICAS_ENV, f"a number of replicas from 1 to {MAX_REPLICAS}, "
                                                         f"not {raw!r}")])
    return int(raw)


async def ensure_stream(js, wanted: StreamConfig, owned: Iterable[str] = ()) -> None:
    """Create the stream ``wanted`` describes when it is missing; when it exists, bring only the ``owned``
    settings (and the replicas, when set) to ``wanted`` and warn about any other difference."""
    replicas = replicas_setting()
    wanted = replace(wanted, num_replicas=replicas or 1)
    try:
        current = (await js.stream_info(wanted.name)).config
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            log.info("stream %s created (%d replicas)", wanted.name, wanted.num_replicas)
            return
        except BadRequestError:  # another process created it meanwhile, differently: compare with that one
            current = (await js.stream_info(wanted.name)).config
    await _reconcile(js, current, {f: getattr(wanted, f) for f in STREAM_FIELDS}, set(owned), replicas)


async def ensure_bucket(js, wanted: KeyValueConfig) -> KeyValue:
    """The key-value bucket, created as ``wanted`` (with the replicas setting) when missing; an existing one
    is left as it is, apart from its replicas when set, with a warning for each difference. Its watches
    notice a dead node within seconds (``_WatchHeartbeats``)."""
    replicas = replicas_setting()
    stream = f"KV_{wanted.bucket}"
    try:
        current = (await js.stream_info(stream)).config
    except NotFoundError:
        try:
            await js.create_key_value(replace(wanted, replicas=replicas or 1))
            log.info("key-value bucket %s created (%d replicas)", wanted.bucket, replicas or 1)
        except BadRequestError:  # another process created it meanwhile: compare with that one
            pass
        current = (await js.stream_info(stream)).config
    # a bucket is a stream: its history is the messages kept per subject (key), its ttl the max age
    expected = {"max_msgs_per_subject": wanted.history, "max_age": wanted.ttl, "max_bytes": wanted.max_bytes}
    await _reconcile(js, current, expected, set(), replicas)
    return KeyValue(name=wanted.bucket, stream=stream, pre=f"$KV.{wanted.bucket}.",
                    js=cast(JetStreamContext, _WatchHeartbeats(js)), direct=bool(current.allow_direct))


class _WatchHeartbeats:
    """The JetStream context of a bucket, asking each ordered consumer (a key-value watch) for a heartbeat
    every ``WATCH_HEARTBEAT_S`` instead of nats-py's 5 s.

    A watch's consumer lives on one node of a cluster. When that node dies, a client connected to another
    one learns it only from two missing heartbeats, then makes a new consumer from where it stopped. At 5 s
    a process kept its old view of the keys and the config for 9-13 s after a node was killed (measured on
    the 3-node cluster of tests/cluster): a new key refused, a revoked one accepted. One heartbeat a second
    per watch is all it costs.
    """

    def __init__(self, js):
        self._js = js

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def subscribe(self, *args, **kwargs):
        if kwargs.get("ordered_consumer"):
            kwargs.setdefault("idle_heartbeat", WATCH_HEARTBEAT_S)
        return await self._js.subscribe(*args, **kwargs)


async def _reconcile(js, current: StreamConfig, expected: dict[str, Any], owned: set[str],
                     replicas: int | None) -> None:
    """Apply ``owned`` and the replicas setting (None: unset, any count is fine) to the stream; warn about
    the rest of ``expected`` that differs (None: not compared)."""
    changes = {f: expected[f] for f in owned if not _same(getattr(current, f), expected[f])}
    if replicas is not None and current.num_replicas != replicas:
        changes["num_replicas"] = replicas
    for field, value in expected.items():
        if field not in changes and value is not None and not _same(getattr(current, field), value):
            log.warning("stream %s: %s is %r where this release creates %r; left as it is",
                        current.name, field, getattr(current, field), value)
    if changes:
        # the stream's own config with these fields changed: nothing else an operator set is touched
        await js.update_stream(replace(current, **changes))
        log.info("stream %s updated: %s", current.name, ", ".join(f"{f}={v!r}" for f, v in changes.items()))


def _same(current: Any, expected: Any) -> bool:
    if isinstance(expected, float) or isinstance(current, float):
        return current is not None and expected is not None and math.isclose(current, expected, rel_tol=1e-9)
    return bool(current == expected)
