"""Pure domain logic of the usage service: no I/O, unit-tested without servers.

- ``event_to_row``: a ``UsageEvent`` as a ``usage_events`` row (ClickHouse).
- ``window_updates`` / ``window_script_args``: what one event adds to the Redis
  sliding windows (layout in ``llmgw_common.windows``).
- ``current_from_totals``: window totals as a ``UsageCurrent`` reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Iterable, Sequence

from pydantic import TypeAdapter

from llmgw_common.messages import Attempt, ScopeUsage, UsageCurrent, UsageEvent, WindowTotals
from llmgw_common.windows import (
    KEY_PREFIX,
    SCOPES_KEY,
    SEEN_PREFIX,
    SEEN_TTL_S,
    WINDOWS,
    Window,
    model_scope,
    nano_to_usd,
    parse_scope,
    provider_scope,
    usd_to_nano,
)

# ---- ClickHouse rows --------------------------------------------------------

TABLE = "usage_events"
COLUMNS: tuple[str, ...] = (
    "id", "ts", "request_id", "endpoint", "key_id", "provider", "model", "upstream_model", "stream",
    "tokens_in", "tokens_out", "tokens_cached", "cost_usd", "latency_ms", "ttft_ms", "status", "error",
    "attempts", "attempts_count", "route_reason", "schema_version",
)

# Decimal(18, 9): 9 digits after the point, 9 before.
COST_QUANTUM = Decimal("0.000000001")
COST_MAX = Decimal("999999999.999999999")
_UINT64_MAX = 2**64 - 1
# compact JSON of the attempts, serialized by pydantic-core (4x faster than json.dumps of model_dump)
_ATTEMPTS_JSON = TypeAdapter(list[Attempt])


def to_utc(dt: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC already (that is what every service sends)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def clamp_cost(cost: Decimal) -> Decimal:
    """Cost rounded to nano-USD and kept inside Decimal(18, 9), so one odd event cannot block an insert."""
    if not cost.is_finite():
        return Decimal(0).quantize(COST_QUANTUM)
    if cost > COST_MAX:
        return COST_MAX
    if cost < -COST_MAX:
        return -COST_MAX
    return cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def _uint(value: int, top: int = _UINT64_MAX) -> int:
    return max(0, min(top, int(value)))


def event_to_row(ev: UsageEvent) -> list[Any]:
    """One ``usage_events`` row, in ``COLUMNS`` order. Absent strings become ''."""
    return [
        ev.id,
        to_utc(ev.ts),
        ev.request_id,
        ev.endpoint,
        ev.key_id or "",
        ev.provider or "",
        ev.model,
        ev.upstream_model or "",
        bool(ev.stream),
        _uint(ev.tokens_in),
        _uint(ev.tokens_out),
        _uint(ev.tokens_cached),
        clamp_cost(ev.cost_usd),
        float(ev.latency_ms),
        None if ev.ttft_ms is None else float(ev.ttft_ms),
        _uint(ev.status, 65535),
        ev.error,
        _ATTEMPTS_JSON.dump_json(ev.attempts).decode() if ev.attempts else "[]",
        _uint(len(ev.attempts), 255),
        ev.route_reason,
        _uint(ev.schema_version, 65535),
    ]


# what DateTime64(3) can hold, with a margin; an event outside it could never be inserted
TS_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(2200, 1, 1, tzinfo=timezone.utc)


def rejection_reason(ev: UsageEvent) -> str | None:
    """Why a decodable event can still never be stored (it is then terminated, not retried forever)."""
    ts = to_utc(ev.ts)
    if not TS_MIN <= ts < TS_MAX:
        return f"timestamp {ts.isoformat()} out of range"
    return None


def dedupe(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    """First occurrence of every event id, order kept."""
    seen: set[str] = set()
    out: list[UsageEvent] = []
    for ev in events:
        if ev.id not in seen:
            seen.add(ev.id)
            out.append(ev)
    return out


# ---- Redis windows ----------------------------------------------------------

def bucket_start(ts_s: int, bucket_s: int) -> int:
    return ts_s - ts_s % bucket_s


def bucket_key(scope: str, bucket_s: int, start: int) -> str:
    return f"{KEY_PREFIX}{scope}:{bucket_s}:{start}"


def bucket_expire_at(start: int, window: Window) -> int:
    """The moment a bucket can no longer fall inside its window (the reader's precision is one bucket)."""
    return start + window.seconds + window.bucket_s


def event_scopes(ev: UsageEvent) -> list[str]:
    """Scopes an event counts in: its provider and its (provider, model); none when nobody served it."""
    if not ev.provider:
        return []
    return [provider_scope(ev.provider), model_scope(ev.provider, ev.model)]


@dataclass(frozen=True)
class BucketUpdate:
    key: str
    expire_at: int
    requests: int
    tokens_in: int
    tokens_out: int
    cost_nano: int


def window_updates(ev: UsageEvent, now_s: int, rebuild: bool = False) -> list[BucketUpdate]:
    """Every bucket the event adds to, skipping buckets already expired.

    Live (``rebuild=False``): when the router reserved capacity for this
    request at admission, the reservation already counted the request and its
    estimated tokens and cost in the buckets of its time; the event then adds
    only the difference between actual and estimate, to those same buckets.
    Rebuild (replay into empty windows): no reservation exists, so the full
    amounts go into the buckets of the event's time.

    An event stamped in the future (a producer's clock ahead of ours) counts
    now: it already used the provider's capacity.
    """
    tin, tout = _uint(ev.tokens_in), _uint(ev.tokens_out)
    cost = usd_to_nano(clamp_cost(ev.cost_usd))
    r = ev.reservation
    if r is not None and not rebuild and r.provider == ev.provider:
        ts_s = min(r.at_s, now_s)
        requests, tin, tout, cost = 0, tin - r.tokens_in, tout - r.tokens_out, cost - r.cost_nano
        scopes = [provider_scope(r.provider), model_scope(r.provider, r.model)]
    else:
        ts_s = min(math.floor(to_utc(ev.ts).timestamp()), now_s)
        requests = 1
        scopes = event_scopes(ev)
    updates: list[BucketUpdate] = []
    for scope in scopes:
        for w in WINDOWS:
            start = bucket_start(ts_s, w.bucket_s)
            expire_at = bucket_expire_at(start, w)
            if expire_at <= now_s:
                continue
            updates.append(BucketUpdate(bucket_key(scope, w.bucket_s, start), expire_at, requests, tin, tout, cost))
    return updates


# Applies a batch of events to the windows atomically and idempotently.
# ARGV: seen_ttl_s, scopes_key, then per event:
#   seen_key, n_scopes, scope * n_scopes, n_buckets, (key, expire_at, req, tin, tout, cost) * n_buckets
# An event whose seen key already exists (a redelivery or a replay) changes nothing.
# Returns the number of events applied now.
APPLY_EVENTS_LUA = """
local ttl = tonumber(ARGV[1])
local scopes_key = ARGV[2]
local i = 3
local applied = 0
while i <= #ARGV do
  local fresh = redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl)
  local n_scopes = tonumber(ARGV[i + 1])
  i = i + 2
  if fresh then
    applied = applied + 1
    for s = 0, n_scopes - 1 do
      redis.call('SADD', scopes_key, ARGV[i + s])
    end
  end
  i = i + n_scopes
  local n_buckets = tonumber(ARGV[i])
  i = i + 1
  if fresh then
    for b = 0, n_buckets - 1 do
      local j = i + b * 6
      local key = ARGV[j]
      redis.call('HINCRBY', key, 'req', ARGV[j + 2])
      redis.call('HINCRBY', key, 'tin', ARGV[j + 3])
      redis.call('HINCRBY', key, 'tout', ARGV[j + 4])
      redis.call('HINCRBY', key, 'cost', ARGV[j + 5])
      redis.call('EXPIREAT', key, ARGV[j + 1])
    end
  end
  i = i + n_buckets * 6
end
return applied
"""


def seen_key(event_id: str) -> str:
    return f"{SEEN_PREFIX}{event_id}"


def window_script_args(events: Sequence[UsageEvent], now_s: int, rebuild: bool = False) -> list[Any]:
    """ARGV for ``APPLY_EVENTS_LUA``; events nobody served (no scope) are left out."""
    args: list[Any] = [SEEN_TTL_S, SCOPES_KEY]
    for ev in events:
        scopes = event_scopes(ev)
        if not scopes:
            continue
        updates = window_updates(ev, now_s, rebuild)
        args += [seen_key(ev.id), len(scopes), *scopes, len(updates)]
        for u in updates:
            args += [u.key, u.expire_at, u.requests, u.tokens_in, u.tokens_out, u.cost_nano]
    return args


def current_from_totals(totals: dict[str, dict[str, dict[str, int]]], at: datetime) -> UsageCurrent:
    """``WindowReader.read`` output as a ``UsageCurrent`` (cost back to USD), scopes sorted."""
    scopes: list[ScopeUsage] = []
    for scope in sorted(totals):
        kind, provider, model = parse_scope(scope)
        windows = {
            name: WindowTotals(requests=t.get("req", 0), tokens_in=t.get("tin", 0), tokens_out=t.get("tout", 0),
                               cost_usd=nano_to_usd(t.get("cost", 0)))
            for name, t in totals[scope].items()
        }
        scopes.append(ScopeUsage(scope=kind, provider=provider, model=model, windows=windows))
    return UsageCurrent(at=at, scopes=scopes)
