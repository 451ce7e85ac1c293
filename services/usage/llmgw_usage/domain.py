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


@dataclass(frozen=True)
class EventAmounts:
    """What one event adds to the windows, and where."""

    ts_s: int
    scopes: tuple[str, ...]
    requests: int
    tokens_in: int
    tokens_out: int
    cost_nano: int


def event_amounts(ev: UsageEvent, now_s: int, rebuild: bool = False) -> EventAmounts | None:
    """The amounts an event adds and the time of the buckets they go into; None when nobody served it.

    Live (``rebuild=False``): when the router reserved capacity for this
    request at admission, the reservation already counted the request and its
    estimated tokens and cost in the buckets of its time; the event then adds
    only the difference between actual and estimate, to those same buckets.
    Rebuild (replay into empty windows): no reservation exists, so the full
    amounts go into the buckets of the event's time.

    An event stamped in the future (a producer's clock ahead of ours) counts
    now: it already used the provider's capacity.
    """
    scopes = event_scopes(ev)
    if not scopes:
        return None
    tin, tout = _uint(ev.tokens_in), _uint(ev.tokens_out)
    cost = usd_to_nano(clamp_cost(ev.cost_usd))
    r = ev.reservation
    if r is not None and not rebuild and r.provider == ev.provider:
        return EventAmounts(min(r.at_s, now_s), (provider_scope(r.provider), model_scope(r.provider, r.model)),
                            0, tin - r.tokens_in, tout - r.tokens_out, cost - r.cost_nano)
    return EventAmounts(min(math.floor(to_utc(ev.ts).timestamp()), now_s), tuple(scopes), 1, tin, tout, cost)


def live_buckets(scopes: Sequence[str], ts_s: int, now_s: int) -> list[tuple[str, int]]:
    """(key, expire_at) of every bucket of every window that time ``ts_s`` falls in and that has not expired."""
    out = []
    for scope in scopes:
        for w in WINDOWS:
            start = bucket_start(ts_s, w.bucket_s)
            expire_at = bucket_expire_at(start, w)
            if expire_at > now_s:
                out.append((bucket_key(scope, w.bucket_s, start), expire_at))
    return out


def window_updates(ev: UsageEvent, now_s: int, rebuild: bool = False) -> list[BucketUpdate]:
    """Every bucket the event adds to (see ``event_amounts``), skipping buckets already expired."""
    a = event_amounts(ev, now_s, rebuild)
    if a is None:
        return []
    return [BucketUpdate(key, expire_at, a.requests, a.tokens_in, a.tokens_out, a.cost_nano)
            for key, expire_at in live_buckets(a.scopes, a.ts_s, now_s)]


# grouping by the smallest bucket is only right if every other bucket is a multiple of it
assert all(w.bucket_s % WINDOWS[0].bucket_s == 0 for w in WINDOWS)

# Applies a batch of events to the windows atomically and idempotently.
# Events that go into the same buckets (same scopes, same 5-second bucket: every
# longer bucket is a multiple of it) share a group, so the script sums them and
# touches each bucket once per batch instead of once per event.
# ARGV: seen_ttl_s, scopes_key, n_groups, then per group:
#   n_buckets, (key, expire_at) * n_buckets, n_scopes, scope * n_scopes
# then per event: seen_key, group (1-based), req, tin, tout, cost.
# An event whose seen key already exists (a redelivery or a replay) changes nothing.
# Returns the number of events applied now.
APPLY_EVENTS_LUA = """
local ttl = tonumber(ARGV[1])
local scopes_key = ARGV[2]
local n_groups = tonumber(ARGV[3])
local i = 4
local groups = {}
for g = 1, n_groups do
  local group = {buckets = {}, scopes = {}, sums = {0, 0, 0, 0}, hit = false}
  local nb = tonumber(ARGV[i]); i = i + 1
  for b = 1, nb do
    group.buckets[b] = {ARGV[i], ARGV[i + 1]}; i = i + 2
  end
  local ns = tonumber(ARGV[i]); i = i + 1
  for s = 1, ns do
    group.scopes[s] = ARGV[i]; i = i + 1
  end
  groups[g] = group
end
local applied = 0
while i <= #ARGV do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    local group = groups[tonumber(ARGV[i + 1])]
    for f = 1, 4 do
      group.sums[f] = group.sums[f] + tonumber(ARGV[i + 1 + f])
    end
    group.hit = true
    applied = applied + 1
  end
  i = i + 6
end
local fields = {'req', 'tin', 'tout', 'cost'}
for _, group in ipairs(groups) do
  if group.hit then
    for _, bucket in ipairs(group.buckets) do
      for f = 1, 4 do
        local v = group.sums[f]
        if v ~= 0 then  -- also keeps Lua's "-0" away from HINCRBY
          redis.call('HINCRBY', bucket[1], fields[f], string.format('%.0f', v))
        end
      end
      redis.call('EXPIREAT', bucket[1], bucket[2])
    end
    for _, scope in ipairs(group.scopes) do
      redis.call('SADD', scopes_key, scope)
    end
  end
end
return applied
"""


def seen_key(event_id: str) -> str:
    return f"{SEEN_PREFIX}{event_id}"


def window_script_args(events: Sequence[UsageEvent], now_s: int, rebuild: bool = False) -> list[Any]:
    """ARGV for ``APPLY_EVENTS_LUA``; events nobody served (no scope) are left out."""
    group_of: dict[tuple[tuple[str, ...], int], int] = {}
    group_args: list[Any] = []
    event_args: list[Any] = []
    for ev in events:
        a = event_amounts(ev, now_s, rebuild)
        if a is None:
            continue
        signature = (a.scopes, a.ts_s - a.ts_s % WINDOWS[0].bucket_s)
        group = group_of.get(signature)
        if group is None:
            group = group_of[signature] = len(group_of) + 1
            buckets = live_buckets(a.scopes, a.ts_s, now_s)
            group_args.append(len(buckets))
            for key, expire_at in buckets:
                group_args += [key, expire_at]
            group_args += [len(a.scopes), *a.scopes]
        event_args += [seen_key(ev.id), group, a.requests, a.tokens_in, a.tokens_out, a.cost_nano]
    if not event_args:
        return [SEEN_TTL_S, SCOPES_KEY]
    return [SEEN_TTL_S, SCOPES_KEY, len(group_of), *group_args, *event_args]


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
