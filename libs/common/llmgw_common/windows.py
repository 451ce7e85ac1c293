"""The Redis sliding-window layout: the live store the usage service writes and the router reads.

Each window of ``seconds`` is kept in fixed buckets of ``bucket_s``; a request
goes into the bucket of its second (``at_s - at_s % bucket_s``). At time
``now`` a window sums the buckets that overlap ``[now - seconds, now]``: the
current bucket and the ``seconds // bucket_s`` before it (13 keys for the
minute, 61 for the hour, 97 for the day). The window's oldest bucket is read in
full, so a request counts for at least ``seconds`` (it still counts at
``t + seconds - 1 ms``) and at most one bucket longer (it is gone by
``t + seconds + bucket_s``): 60..65 s for the minute, 1 h..1 h 1 min for the
hour, 1 d..1 d 15 min for the day. Summing one bucket fewer would let a
request go up to one bucket *early*, and a limit of N per minute would then
admit up to 2N within some 60 s. (With one bucket per request, fewer keys
cannot cover every ``[t, t + seconds)``: a request in the last second of its
bucket must still count while ``now`` is in the bucket ``seconds`` later.)

Key per bucket: ``llmgw:w:{scope}:{bucket_s}:{bucket_start}``, a hash with
integer fields ``req``, ``tin``, ``tout`` and ``cost`` (nano-USD, so sums stay
exact). It expires at ``bucket_start + seconds + bucket_s``: exactly when the
last window that sums it has moved past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from . import redis_keys

KEY_PREFIX = redis_keys.WINDOW_PREFIX
SCOPES_KEY = redis_keys.SCOPES  # set of every scope that has ever been written
SEEN_PREFIX = redis_keys.SEEN_PREFIX  # event ids already applied, one key each (ids that are not ULIDs)
SEEN_SET_PREFIX = redis_keys.SEEN_SET_PREFIX  # ULID event ids already applied, one set per minute of id time
SEEN_SET_S = 60

FIELDS = ("req", "tin", "tout", "cost")
NANO = Decimal(1_000_000_000)


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    bucket_s: int

    @property
    def buckets(self) -> int:
        """Buckets per window length (12, 60, 96); a window sums one more (``keys_read``)."""
        return self.seconds // self.bucket_s

    @property
    def keys_read(self) -> int:
        return self.buckets + 1

    def bucket_start(self, ts_s: int) -> int:
        return ts_s - ts_s % self.bucket_s

    def read_range(self, now_s: int) -> tuple[int, int]:
        """(first, last) bucket start a window sums at ``now_s``, both included (step ``bucket_s``)."""
        last = self.bucket_start(now_s)
        return last - self.seconds, last

    def expire_at(self, start: int) -> int:
        """The first second no window reads the bucket starting at ``start`` any more."""
        return start + self.seconds + self.bucket_s


WINDOWS: tuple[Window, ...] = (
    Window("minute", 60, 5),
    Window("hour", 3600, 60),
    Window("day", 86400, 900),
)
# an applied event id is remembered as long as the longest window (+ margin)
SEEN_TTL_S = max(w.seconds for w in WINDOWS) + 3600


def seen_set(event_id_ms: int, now_s: int) -> tuple[str, int]:
    """(key, expire_at) of the set that remembers which events were applied, for an event whose id was made
    at ``event_id_ms`` (``ids.id_time_ms``: every copy of an event, a redelivery or the router's abandoned
    event for the same request, finds the same set). One set per minute of id time, checked and added to
    once per batch instead of one key per event; it is kept ``SEEN_TTL_S`` past its minute, and past the
    last time it was added to (an event applied late is remembered as long as one applied at once)."""
    start = event_id_ms // 1000
    start -= start % SEEN_SET_S
    return f"{SEEN_SET_PREFIX}{start}", max(start + SEEN_SET_S, now_s) + SEEN_TTL_S


def provider_scope(provider: str) -> str:
    return f"p:{provider}"


def model_scope(provider: str, model: str) -> str:
    return f"m:{provider}/{model}"


def key_scope(key_id: str) -> str:
    return f"k:{key_id}"


def parse_scope(scope: str) -> tuple[str, str, str | None]:
    """``p:openai`` -> ("provider", "openai", None); ``m:openai/gpt-4o`` -> ("model", "openai", "gpt-4o");
    ``k:<key id>`` -> ("key", "<key id>", None)."""
    kind, _, rest = scope.partition(":")
    if kind == "m":
        provider, _, model = rest.partition("/")
        return "model", provider, model
    if kind == "k":
        return "key", rest, None
    return "provider", rest, None


# ---- calendar months (keys' budgets) --------------------------------------------------------------
# A gateway key's monthly limits count in one hash per calendar month, in the configured time zone
# (keys.budget_timezone, UTC by default): ``llmgw:cal:{scope}:month:{YYYY-MM}`` with the same fields as
# a window bucket. The month's total is that one hash; it resets when the next month's hash starts.
# Kept 40 days past the month's end, for looking back.
CALENDAR_PREFIX = redis_keys.CALENDAR_PREFIX
CALENDAR_KEEP_S = 40 * 86400


def month_of(ts_s: float, tz: str = "UTC") -> tuple[str, int, int]:
    """(label ``YYYY-MM``, start, end) of the calendar month ``ts_s`` falls in, in zone ``tz`` (epoch seconds)."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(ts_s, zone)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1))
    return f"{start.year:04d}-{start.month:02d}", int(start.timestamp()), int(end.timestamp())


def month_key(scope: str, ts_s: float, tz: str = "UTC") -> tuple[str, int]:
    """(key, expire_at) of the calendar-month hash ``ts_s`` counts in."""
    label, _start, end = month_of(ts_s, tz)
    return f"{CALENDAR_PREFIX}{scope}:month:{label}", end + CALENDAR_KEEP_S


def usd_to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


def nano_to_usd(nano: int) -> Decimal:
    return Decimal(nano) / NANO


# The window arithmetic in Lua, shared by every script that reads the windows
# (this reader and the router's admission): the first and last bucket start a
# window of ``seconds`` sums at ``now`` (integer seconds), as ``Window.read_range``.
LUA_WINDOW_RANGE = """
local function window_range(now, seconds, bucket)
  local last = now - (now % bucket)
  return last - seconds, last
end
"""

# What live capacity leases (llmgw_router.capacity_leases) hold that their edges have not admitted (yet, as
# their last LeaseUse reports said): a view of the windows leaves it out, so it shows what was admitted, as
# the per-request admission did (each request counted from its admission), not a lease's unused part.
# Admission counts the whole lease (consumed + reserved by live leases <= limit): only the views read this.
# unused[scope] = {{at_s, req, tin, tout, cost}, ...}; month_unused[month key] = {req, tin, tout, cost}.
LUA_LEASES_UNUSED = """
local unused, month_unused = {}, {}
for _, id in ipairs(redis.call('ZRANGE', '$CAP_LEASE_ENDS', 0, -1)) do
  local v = redis.call('HMGET', '$CAP_LEASE_PREFIX' .. id, 'state', 'pscope', 'mscope', 'kscope', 'month', 'at',
                       'n', 'tin', 'tout', 'cost', 'used_n', 'used_tin', 'used_tout', 'used_cost')
  if v[1] == 'live' then
    local d = {tonumber(v[6]) or 0}
    for f = 1, 4 do d[f + 1] = math.max(0, (tonumber(v[6 + f]) or 0) - (tonumber(v[10 + f]) or 0)) end
    for s = 2, 4 do
      if v[s] and v[s] ~= '' then
        unused[v[s]] = unused[v[s]] or {}
        table.insert(unused[v[s]], d)
      end
    end
    if v[5] and v[5] ~= '' then
      local m = month_unused[v[5]] or {0, 0, 0, 0}
      for f = 1, 4 do m[f] = m[f] + d[f + 1] end
      month_unused[v[5]] = m
    end
  end
end
"""

_SUM_WINDOWS = """
local now = tonumber(ARGV[1])
local n_scopes = tonumber(ARGV[2])
local windows = {}
local i = 3 + n_scopes
while i <= #ARGV do
  table.insert(windows, {tonumber(ARGV[i]), tonumber(ARGV[i + 1])})
  i = i + 2
end
local out = {}
for s = 1, n_scopes do
  local scope = ARGV[2 + s]
  for _, w in ipairs(windows) do
    local seconds, bucket = w[1], w[2]
    local first, last = window_range(now, seconds, bucket)
    local req, tin, tout, cost = 0, 0, 0, 0
    for b = first, last, bucket do
      local v = redis.call('HMGET', '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. b, 'req', 'tin', 'tout', 'cost')
      req = req + (tonumber(v[1]) or 0)
      tin = tin + (tonumber(v[2]) or 0)
      tout = tout + (tonumber(v[3]) or 0)
      cost = cost + (tonumber(v[4]) or 0)
    end
    for _, d in ipairs(unused[scope] or {}) do  -- reserved in the bucket of the lease's at_s
      local b = d[1] - (d[1] % bucket)
      if b >= first and b <= last then
        req, tin, tout, cost = req - d[2], tin - d[3], tout - d[4], cost - d[5]
      end
    end
    table.insert(out, req); table.insert(out, tin); table.insert(out, tout); table.insert(out, cost)
  end
end
return out
"""

# Sum every window of every scope in one round trip: what the windows hold (admission's view: what live
# capacity leases reserve counts in full).
# KEYS: none. ARGV: now_s, n_scopes, scope..., then per window: seconds, bucket_s.
# Returns per scope, per window: {req, tin, tout, cost} as a flat list.
READ_WINDOWS_LUA = LUA_WINDOW_RANGE + "local unused = {}\n" + _SUM_WINDOWS
# The same, what live capacity leases hold unused left out: what was admitted (the views' reading).
READ_ADMITTED_WINDOWS_LUA = LUA_WINDOW_RANGE + LUA_LEASES_UNUSED + _SUM_WINDOWS


# A key's calendar month (its month hash, ARGV[1]) as ``{req, tin, tout, cost}``; READ_MONTH_LUA: what live
# capacity leases hold unused left out (as READ_ADMITTED_WINDOWS_LUA).
_MONTH = """
local v = redis.call('HMGET', ARGV[1], 'req', 'tin', 'tout', 'cost')
local m = month_unused[ARGV[1]] or {0, 0, 0, 0}
local out = {}
for f = 1, 4 do out[f] = (tonumber(v[f]) or 0) - m[f] end
return out
"""
READ_RAW_MONTH_LUA = "local month_unused = {}\n" + _MONTH
READ_MONTH_LUA = LUA_LEASES_UNUSED + _MONTH


class WindowReader:
    """Reads window totals with one EVALSHA (the script is registered once per client).

    ``admitted=True`` (the views: router state, ``/api/usage/current``, a key's usage) leaves out what live
    capacity leases hold and their edges have not admitted (yet): each request counts from its admission, as
    with the per-request admission, whatever the leases hold. Without it, what the windows hold: admission's
    own reading (consumed + reserved by live leases)."""

    def __init__(self, redis, admitted: bool = False):
        self._script = redis.register_script(redis_keys.lua(READ_ADMITTED_WINDOWS_LUA if admitted else READ_WINDOWS_LUA))
        self._month = redis.register_script(redis_keys.lua(READ_MONTH_LUA if admitted else READ_RAW_MONTH_LUA))

    async def read_month(self, month_key: str) -> dict[str, int]:
        """A key's calendar-month totals ``{req, tin, tout, cost}`` (its month hash, as ``month_key`` names it)."""
        return dict(zip(FIELDS, (int(x) for x in await self._month(keys=[], args=[month_key]))))

    async def read(self, scopes: list[str], now_s: int) -> dict[str, dict[str, dict[str, int]]]:
        """``{scope: {window_name: {req, tin, tout, cost}}}`` for every scope."""
        if not scopes:
            return {}
        argv: list[object] = [now_s, len(scopes), *scopes]
        for w in WINDOWS:
            argv += [w.seconds, w.bucket_s]
        flat = await self._script(keys=[], args=argv)
        return _unflatten(scopes, flat)


def _unflatten(scopes: list[str], flat: list) -> dict[str, dict[str, dict[str, int]]]:
    result: dict[str, dict[str, dict[str, int]]] = {}
    i = 0
    for scope in scopes:
        per_window = {}
        for w in WINDOWS:
            per_window[w.name] = dict(zip(FIELDS, (int(x) for x in flat[i : i + 4])))
            i += 4
        result[scope] = per_window
    return result
