"""The Redis sliding-window layout: the live store the usage service writes and the router reads.

Each window is a ring of fixed buckets; a window's total is the sum of the
buckets that overlap ``(now - window, now]``. Precision: a request leaves a
window between 0 and one bucket later than exactly ``window`` seconds after it
happened (5 s for the minute window, 1 min for the hour, 15 min for the day).

Key per bucket: ``llmgw:w:{scope}:{bucket_s}:{bucket_start}``, a hash with
integer fields ``req``, ``tin``, ``tout`` and ``cost`` (nano-USD, so sums stay
exact). It expires once it can no longer fall inside its window.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

KEY_PREFIX = "llmgw:w:"
SCOPES_KEY = "llmgw:scopes"  # set of every scope that has ever been written
SEEN_PREFIX = "llmgw:seen:"  # event ids already applied (idempotent projection)

FIELDS = ("req", "tin", "tout", "cost")
NANO = Decimal(1_000_000_000)


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    bucket_s: int

    @property
    def buckets(self) -> int:
        return self.seconds // self.bucket_s


WINDOWS: tuple[Window, ...] = (
    Window("minute", 60, 5),
    Window("hour", 3600, 60),
    Window("day", 86400, 900),
)
# an applied event id is remembered as long as the longest window (+ margin)
SEEN_TTL_S = max(w.seconds for w in WINDOWS) + 3600


def provider_scope(provider: str) -> str:
    return f"p:{provider}"


def model_scope(provider: str, model: str) -> str:
    return f"m:{provider}/{model}"


def parse_scope(scope: str) -> tuple[str, str, str | None]:
    """``p:openai`` -> ("provider", "openai", None); ``m:openai/gpt-4o`` -> ("model", "openai", "gpt-4o")."""
    kind, _, rest = scope.partition(":")
    if kind == "m":
        provider, _, model = rest.partition("/")
        return "model", provider, model
    return "provider", rest, None


def usd_to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


def nano_to_usd(nano: int) -> Decimal:
    return Decimal(nano) / NANO


# Sum every window of every scope in one round trip.
# KEYS: none. ARGV: now_s, n_scopes, scope..., then per window: seconds, bucket_s.
# Returns per scope, per window: {req, tin, tout, cost} as a flat list.
READ_WINDOWS_LUA = """
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
    local last = now - (now % bucket)
    local first = last - seconds + bucket
    local req, tin, tout, cost = 0, 0, 0, 0
    for b = first, last, bucket do
      local v = redis.call('HMGET', 'llmgw:w:' .. scope .. ':' .. bucket .. ':' .. b, 'req', 'tin', 'tout', 'cost')
      req = req + (tonumber(v[1]) or 0)
      tin = tin + (tonumber(v[2]) or 0)
      tout = tout + (tonumber(v[3]) or 0)
      cost = cost + (tonumber(v[4]) or 0)
    end
    table.insert(out, req); table.insert(out, tin); table.insert(out, tout); table.insert(out, cost)
  end
end
return out
"""


class WindowReader:
    """Reads window totals with one EVALSHA (the script is registered once per client)."""

    def __init__(self, redis):
        self._script = redis.register_script(READ_WINDOWS_LUA)

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
