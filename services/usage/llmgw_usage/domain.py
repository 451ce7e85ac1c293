"""Pure domain logic of the usage service: no I/O, unit-tested without servers.

- ``refusal``: whether a stream message is an event at all (ranges, sizes); what it refuses goes to the
  dead letters (``deadletter.py``), and ``llmgw replay`` / ``events import`` skip it the same way.
- ``raw_line`` / ``event_line``: an event as a ``usage_events`` JSON row (ClickHouse parses it).
- ``window_updates`` / ``window_script_args``: what one event adds to the Redis
  sliding windows (layout in ``llmgw_common.windows``).
- ``current_from_totals``: window totals as a ``UsageCurrent`` reply.

What an event may hold. A value outside these bounds is no fact about a request (a status of 10^30, a
negative token count, a cost of a billion dollars): the message is *refused*, i.e. dead-lettered and
terminated, never stored or counted. A value that is only inconvenient is *normalized* and stored:

| field | refused (dead letter, reason) | normalized (stored) |
| --- | --- | --- |
| the message | over 256 kB (``too_large``); not JSON or not a ``UsageEvent`` (``invalid``) | unknown keys dropped; pydantic's coercions (``"stream": "yes"``) |
| id, ts | missing, empty id (``no_key``); ts before 1970 or from 2200 on (``timestamp``) | ts in another zone or naive: UTC |
| id, request_id, endpoint, key_id, provider, model, upstream_model | over 256 characters (``too_long``) | |
| status | outside 0..999 (``out_of_range``) | |
| requests | outside 1..10^9 (``out_of_range``) | |
| tokens_in/out/cached/cache_write/reasoning | outside 0..10^9 (``out_of_range``) | |
| cost_usd | negative, over 10^6 USD, not finite (``out_of_range``) | rounded to nano-USD |
| latency_ms, ttft_ms | outside 0..10^9 ms or not finite (``out_of_range``) | |
| schema_version | outside 0..65535 (``out_of_range``) | |
| error, route_reason | | cut to 4096 characters (ending in "…") |
| attempts | over 64 entries (``too_long``); an attempt's provider / upstream_model over 256 characters, status outside 0..999, latency outside 0..10^9 ms, retries outside 0..1000 (``out_of_range`` / ``too_long``) | an attempt's error cut to 1024 characters |
| reservation | provider / model / lease over 256 characters, tokens outside 0..10^9, cost_nano outside 0..10^15, at_s outside the ts range | |
| request_body, response_body | (only through the message size) | redacted, cut to 16 kB each |

A message ClickHouse still refuses (none is known) is dead-lettered as ``rejected``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Iterable, Sequence, TypeVar

import msgspec

from llmgw_common.ids import id_time_ms
from llmgw_common.leases import lease_member
from llmgw_common.logs import redact
from llmgw_common.messages import (COUNT_TOKENS_ENDPOINT, Attempt, Reservation, ScopeUsage, UsageCurrent, UsageEvent,
                                   WindowTotals)
from llmgw_common.structs import strict_struct
from llmgw_common.windows import (
    KEY_PREFIX,
    NANO,
    SCOPES_KEY,
    SEEN_PREFIX,
    SEEN_TTL_S,
    WINDOWS,
    Window,
    key_scope,
    model_scope,
    month_key,
    nano_to_usd,
    parse_scope,
    provider_scope,
    seen_set,
    usd_to_nano,
)

# ---- ClickHouse rows ---------------------------------------------------------
#
# usage_events is filled with JSONEachRow: ClickHouse parses each event's JSON in
# C++. On the hot path the consumer passes the bytes of each stream message
# through as they are (``raw_line``), so no row is ever built in Python; events
# that cannot go as they are (an odd value, a foreign producer) are written out
# again in a normalized form (``event_line``).

TABLE = "usage_events"
INSERT_FORMAT = "JSONEachRow"
# how ClickHouse reads the event JSON: fields without a column (reservation, bodies) are skipped; null and
# omitted fields take the column default (attempts_count is computed from attempts); the attempts array is
# kept as its JSON text; any ISO 8601 time is accepted
INSERT_FORMAT_SETTINGS = {
    "input_format_skip_unknown_fields": 1,
    "input_format_null_as_default": 1,
    "input_format_defaults_for_omitted_fields": 1,
    "input_format_json_read_arrays_as_strings": 1,
    "date_time_input_format": "best_effort",
}
# the UsageEvent fields usage_events stores (attempts_count is computed by ClickHouse from attempts)
ROW_FIELDS = frozenset({
    "id", "ts", "request_id", "endpoint", "key_id", "provider", "model", "upstream_model", "stream",
    "tokens_in", "tokens_out", "tokens_cached", "tokens_cache_write", "tokens_reasoning", "cost_usd", "cache_saved_usd",
    "latency_ms", "ttft_ms", "status", "error", "requests", "attempts", "route_reason", "schema_version",
})

# Decimal(18, 9): 9 digits after the point, 9 before.
COST_QUANTUM = Decimal("0.000000001")
COST_MAX = Decimal("999999999.999999999")
_UINT64_MAX = 2**64 - 1
_NANO_MAX = int(COST_MAX * NANO)
UINT16_MAX = STATUS_MAX = 65535


# A ``UsageEvent`` as the ingest decodes it: derived from its one definition (``llmgw_common.structs``),
# every field with the same name, type and default, but ``id`` and ``ts`` are required and no other key is
# allowed (a message that goes to ClickHouse as it is must not carry a key of a column only the store
# writes, ``insert_token``).
#
# A msgspec struct, decoded strictly (``decode_ingest``): a quarter of the time pydantic takes, and no
# garbage-collector tracking of the event itself (no cycles possible). Whatever it refuses (a number as a
# string, a missing id or ts, ...) goes the slow way: decoded whole by ``UsageEvent`` with pydantic's
# rules, which decide whether it is an event at all. So a message goes into ClickHouse only if it is a
# valid ``UsageEvent`` (what ``llmgw replay`` and ``llmgw events import`` read back), every column value
# checked, not only the ones the ingest reads.
IngestEvent = strict_struct(UsageEvent, required=("id", "ts"), forbid_unknown_fields=True, name="IngestEvent")
IngestAttempt = strict_struct(Attempt)  # the nested structs IngestEvent decodes into
IngestReservation = strict_struct(Reservation)


_INGEST_DECODER = msgspec.json.Decoder(IngestEvent)
_to_json = msgspec.json.Encoder().encode  # compact JSON bytes, several times faster than json.dumps


def decode_ingest(data: bytes) -> IngestEvent:
    """An ``IngestEvent`` from a message; raises ``msgspec.DecodeError`` (a ``ValueError``) when the message
    is not strictly one (the caller then tries ``UsageEvent``)."""
    return _INGEST_DECODER.decode(data)


class EventRow(msgspec.Struct, frozen=True, gc=False):
    """An event on its way into usage_events: what Python reads of it and the JSON object ClickHouse parses.
    (A msgspec struct: one is made per event, in a fifth of a NamedTuple's time.)"""

    id: str  # the event's id and time, read in every loop over a batch: plain attributes
    ts_s: float  # seconds since the epoch
    event: IngestEvent | UsageEvent
    line: bytes


# ---- what an event may hold (the table in the module doc) ----------------------

MAX_EVENT_BYTES = 256 * 1024  # a stream message larger than this is refused unread
MAX_ID_CHARS = 256  # ids and names: id, request_id, endpoint, key_id, provider, model, upstream_model
MAX_STATUS = 999
MAX_TOKENS = 10**9
MAX_REQUESTS = 10**9  # requests one event stands for (refusals an edge aggregated)
MAX_COST_USD = Decimal(10**6)
MAX_COST_NANO = 10**15  # MAX_COST_USD in nano-USD (a reservation's cost)
MAX_MS = 1e9  # latency_ms, ttft_ms, an attempt's latency_ms: about 11.6 days
MAX_ATTEMPTS = 64
MAX_RETRIES = 1000  # an attempt's retries
MAX_ERROR_CHARS = 4096  # error, route_reason: longer ones are cut
MAX_ATTEMPT_ERROR_CHARS = 1024  # an attempt's error: longer ones are cut
CUT_MARK = "…"


class Refusal(msgspec.Struct, frozen=True):
    """Why a message is no event: ``code`` names the dead-letter subject, ``detail`` says it in words."""

    code: str
    detail: str


TOO_LARGE, INVALID, NO_KEY, TIMESTAMP, OUT_OF_RANGE, TOO_LONG, REJECTED = (
    "too_large", "invalid", "no_key", "timestamp", "out_of_range", "too_long", "rejected")


def size_refusal(size: int) -> Refusal | None:
    """A message over ``MAX_EVENT_BYTES`` is refused before it is decoded."""
    if size > MAX_EVENT_BYTES:
        return Refusal(TOO_LARGE, f"message of {size} bytes, more than the {MAX_EVENT_BYTES} an event may have")
    return None


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


def epoch_s(dt: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken to be UTC (``to_utc``), never local time."""
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt).timestamp()


def _uint(value: int, top: int = _UINT64_MAX) -> int:
    if 0 <= value <= top:  # the usual case, without the builtins' calls (this runs twice per event)
        return value
    return max(0, min(top, int(value)))


def _exact_nano(cost: Decimal) -> int | None:
    """The cost in nano-USD when ClickHouse stores it exactly as it is written (finite, at most 9 decimals,
    inside Decimal(18, 9)); None when it must be rounded or clamped first."""
    if cost.is_finite():
        nano = cost * NANO
        whole = int(nano)
        if whole == nano and -_NANO_MAX <= whole <= _NANO_MAX:
            return whole
    return None


def raw_line(ev: IngestEvent, data: bytes) -> bytes | None:
    """The message itself as the event's row when ClickHouse stores it exactly as ``event_line`` would (a
    JSON object, counters, status, schema version and cost in range); None when it must be normalized first."""
    if (data[:1] == b"{"  # the store adds the insert token after the brace (no other key: IngestEvent)
            and 0 <= ev.tokens_in <= _UINT64_MAX and 0 <= ev.tokens_out <= _UINT64_MAX
            and 0 <= ev.tokens_cached <= _UINT64_MAX and 0 <= ev.tokens_cache_write <= _UINT64_MAX
            and 0 <= ev.tokens_reasoning <= _UINT64_MAX and 0 <= ev.status <= STATUS_MAX
            and 0 <= ev.schema_version <= UINT16_MAX
            and _exact_nano(ev.cost_usd) is not None and _exact_nano(ev.cache_saved_usd) is not None
            and not needs_cut(ev)):
        return data
    return None


def needs_cut(ev: IngestEvent | UsageEvent) -> bool:
    """Whether a text of the event is longer than it is stored (``event_line`` cuts it)."""
    if len(ev.route_reason) > MAX_ERROR_CHARS or (ev.error is not None and len(ev.error) > MAX_ERROR_CHARS):
        return True
    for a in ev.attempts:
        if a.error is not None and len(a.error) > MAX_ATTEMPT_ERROR_CHARS:
            return True
    return False


def cut_text(text: str | None, limit: int) -> str | None:
    """``text`` at most ``limit`` characters long, a cut one ending in ``CUT_MARK``."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARK)] + CUT_MARK


def event_line(ev: UsageEvent) -> bytes:
    """The event as a usage_events JSON row, normalized: UTC time, counters clamped to their column types,
    cost rounded to nano-USD inside Decimal(18, 9), long texts cut (``needs_cut``)."""
    cuts: dict[str, Any] = {}
    if needs_cut(ev):
        cuts = {"error": cut_text(ev.error, MAX_ERROR_CHARS), "route_reason": cut_text(ev.route_reason, MAX_ERROR_CHARS),
                "attempts": [a.model_copy(update={"error": cut_text(a.error, MAX_ATTEMPT_ERROR_CHARS)})
                             for a in ev.attempts]}
    clean = ev.model_copy(update={
        **cuts,
        "ts": to_utc(ev.ts),
        "tokens_in": _uint(ev.tokens_in),
        "tokens_out": _uint(ev.tokens_out),
        "tokens_cached": _uint(ev.tokens_cached),
        "tokens_cache_write": _uint(ev.tokens_cache_write),
        "tokens_reasoning": _uint(ev.tokens_reasoning),
        "cost_usd": clamp_cost(ev.cost_usd),
        "cache_saved_usd": clamp_cost(ev.cache_saved_usd),
        "status": _uint(ev.status, STATUS_MAX),
        "schema_version": _uint(ev.schema_version, UINT16_MAX),
    })
    return clean.model_dump_json(include=ROW_FIELDS).encode()


def event_row(ev: UsageEvent) -> EventRow:
    return EventRow(ev.id, epoch_s(ev.ts), ev, event_line(ev))


# what DateTime64(3) can hold, with a margin; an event outside it could never be inserted
TS_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(2200, 1, 1, tzinfo=timezone.utc)
_TS_MIN_S, _TS_MAX_S = TS_MIN.timestamp(), TS_MAX.timestamp()
_OWN_KEY = frozenset({"id", "ts"})


def _ms_ok(value: float | None) -> bool:
    return value is None or 0 <= value <= MAX_MS  # False for NaN and infinities too


def _names_ok(*values: str | None) -> bool:
    for v in values:
        if v is not None and len(v) > MAX_ID_CHARS:
            return False
    return True


def _attempt_ok(a: IngestAttempt | Any) -> bool:
    return (len(a.provider) <= MAX_ID_CHARS and len(a.upstream_model) <= MAX_ID_CHARS
            and 0 <= a.status <= MAX_STATUS and 0 <= a.latency_ms <= MAX_MS and 0 <= a.retries <= MAX_RETRIES)


def _reservation_ok(r: IngestReservation | Any) -> bool:
    return (len(r.provider) <= MAX_ID_CHARS and len(r.model) <= MAX_ID_CHARS
            and (r.key_id is None or len(r.key_id) <= MAX_ID_CHARS)
            and (r.lease is None or len(r.lease) <= MAX_ID_CHARS) and _TS_MIN_S <= r.at_s < _TS_MAX_S
            and 0 <= r.tokens_in <= MAX_TOKENS and 0 <= r.tokens_out <= MAX_TOKENS
            and 0 <= r.cost_nano <= MAX_COST_NANO)


def _cost_ok(cost: Decimal) -> bool:
    return cost.is_finite() and 0 <= cost <= MAX_COST_USD


def _num(value: Any) -> str:
    """A number for a message, short even when it is huge."""
    try:
        text = str(value)
    except ValueError:  # an int too long to print
        return "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."


def refusal(ev: IngestEvent | UsageEvent, ts_s: float | None = None) -> Refusal | None:
    """Why a decoded event is no event the projections may hold (see the module doc's table); None: it is
    one. ``ts_s``: its time in seconds since the epoch, when known already.

    A ``UsageEvent`` decoded without an id or a time of its own is refused too: the defaults would give it a
    new one at every decode, so a redelivery, a replay or a second import would count it again."""
    if isinstance(ev, UsageEvent) and not _OWN_KEY <= ev.model_fields_set:
        missing = " and ".join(sorted(_OWN_KEY - ev.model_fields_set))
        return Refusal(NO_KEY, f"no {missing}: an event needs its own id and time (its dedup key)")
    if not _TS_MIN_S <= (epoch_s(ev.ts) if ts_s is None else ts_s) < _TS_MAX_S:
        return Refusal(TIMESTAMP, f"timestamp {to_utc(ev.ts).isoformat()} out of range")
    # the usual case in one expression; the details only for a message that fails it
    if (ev.id and 0 <= ev.status <= MAX_STATUS
            and 0 <= ev.tokens_in <= MAX_TOKENS and 0 <= ev.tokens_out <= MAX_TOKENS
            and 0 <= ev.tokens_cached <= MAX_TOKENS and 0 <= ev.tokens_cache_write <= MAX_TOKENS
            and 0 <= ev.tokens_reasoning <= MAX_TOKENS and _cost_ok(ev.cost_usd) and _cost_ok(ev.cache_saved_usd)
            and 0 <= ev.latency_ms <= MAX_MS and _ms_ok(ev.ttft_ms) and 0 <= ev.schema_version <= UINT16_MAX
            and 1 <= ev.requests <= MAX_REQUESTS
            and _names_ok(ev.id, ev.request_id, ev.endpoint, ev.key_id, ev.provider, ev.model, ev.upstream_model)
            and len(ev.attempts) <= MAX_ATTEMPTS and all(_attempt_ok(a) for a in ev.attempts)
            and (ev.reservation is None or _reservation_ok(ev.reservation))):
        return None
    return _refusal_detail(ev)


def _refusal_detail(ev: IngestEvent | UsageEvent) -> Refusal:
    if not ev.id:
        return Refusal(NO_KEY, "empty id: an event needs its own id (its dedup key)")
    for name in ("id", "request_id", "endpoint", "key_id", "provider", "model", "upstream_model"):
        value = getattr(ev, name)
        if value is not None and len(value) > MAX_ID_CHARS:
            return Refusal(TOO_LONG, f"{name} of {len(value)} characters (at most {MAX_ID_CHARS})")
    if len(ev.attempts) > MAX_ATTEMPTS:
        return Refusal(TOO_LONG, f"{len(ev.attempts)} attempts (at most {MAX_ATTEMPTS})")
    ranges = [("status", ev.status, 0, MAX_STATUS), ("schema_version", ev.schema_version, 0, UINT16_MAX),
              ("requests", ev.requests, 1, MAX_REQUESTS)]
    ranges += [(name, getattr(ev, name), 0, MAX_TOKENS) for name in
               ("tokens_in", "tokens_out", "tokens_cached", "tokens_cache_write", "tokens_reasoning")]
    ranges += [("latency_ms", ev.latency_ms, 0, MAX_MS), ("ttft_ms", ev.ttft_ms, 0, MAX_MS)]
    for name, value, low, high in ranges:
        if value is not None and not low <= value <= high:
            return Refusal(OUT_OF_RANGE, f"{name} {_num(value)} outside {low}..{_num(high)}")
    for name in ("cost_usd", "cache_saved_usd"):
        if not _cost_ok(getattr(ev, name)):
            return Refusal(OUT_OF_RANGE, f"{name} {_num(getattr(ev, name))} outside 0..{MAX_COST_USD}")
    for i, a in enumerate(ev.attempts):
        if not _attempt_ok(a):
            if len(a.provider) > MAX_ID_CHARS or len(a.upstream_model) > MAX_ID_CHARS:
                return Refusal(TOO_LONG, f"attempts[{i}]: provider or upstream_model over {MAX_ID_CHARS} characters")
            return Refusal(OUT_OF_RANGE, f"attempts[{i}]: status {_num(a.status)}, latency_ms {_num(a.latency_ms)} "
                                         f"or retries {_num(a.retries)} out of range")
    return Refusal(OUT_OF_RANGE, "reservation out of range (names over 256 characters, tokens, cost or at_s)")


_Keyed = TypeVar("_Keyed", UsageEvent, EventRow)


def dedupe(events: Iterable[_Keyed]) -> list[_Keyed]:
    """First occurrence of every event id, order kept."""
    seen: set[str] = set()
    out: list[_Keyed] = []
    for ev in events:
        if ev.id not in seen:
            seen.add(ev.id)
            out.append(ev)
    return out


# request / response bodies are capped to this many UTF-8 bytes each before storing
BODY_CAP_BYTES = 16 * 1024


def cap_body(text: str | None, cap: int = BODY_CAP_BYTES) -> tuple[str, bool]:
    """A body redacted (credentials) and cut to ``cap`` UTF-8 bytes; the flag says whether it was cut."""
    if not text:
        return "", False
    clean = redact(text)
    raw = clean.encode("utf-8")
    if len(raw) <= cap:
        return clean, False
    return raw[:cap].decode("utf-8", errors="ignore"), True


def body_rows(events: Iterable[IngestEvent | UsageEvent]) -> list[list]:
    """``request_bodies`` rows for the events that carry a request or response body."""
    rows = []
    for ev in events:
        if ev.request_body is None and ev.response_body is None:
            continue
        req, cut_req = cap_body(ev.request_body)
        resp, cut_resp = cap_body(ev.response_body)
        rows.append([to_utc(ev.ts), ev.id, req, resp, cut_req or cut_resp])
    return rows


# ---- Redis windows ----------------------------------------------------------

def bucket_start(ts_s: int, bucket_s: int) -> int:
    return ts_s - ts_s % bucket_s


def bucket_key(scope: str, bucket_s: int, start: int) -> str:
    return f"{KEY_PREFIX}{scope}:{bucket_s}:{start}"


def bucket_expire_at(start: int, window: Window) -> int:
    """The moment a bucket can no longer fall inside its window (the reader's precision is one bucket)."""
    return start + window.seconds + window.bucket_s


def event_scopes(ev: IngestEvent | UsageEvent) -> tuple[str, ...]:
    """Scopes an event counts in: its provider, its (provider, model) and its gateway key; none when nobody
    served it."""
    if not ev.provider:
        return ()
    return _scopes(ev.provider, ev.model, ev.key_id)


@functools.lru_cache(maxsize=4096)
def _scopes(provider: str, model: str, key_id: str | None = None) -> tuple[str, ...]:
    if key_id:
        return provider_scope(provider), model_scope(provider, model), key_scope(key_id)
    return provider_scope(provider), model_scope(provider, model)


@functools.lru_cache(maxsize=1024)
def _month(scope: str, quarter_hour: int, tz: str) -> tuple[str, int]:
    # month boundaries fall on quarter hours in every zone: one computation per scope and quarter hour
    return month_key(scope, quarter_hour, tz)


def cost_nano(cost: Decimal) -> int:
    """A cost in nano-USD, as ``clamp_cost`` stores it (rounded half-even, kept inside Decimal(18, 9))."""
    whole = _exact_nano(cost)  # the usual case: no rounding, no clamping
    return usd_to_nano(clamp_cost(cost)) if whole is None else whole


@dataclass(frozen=True)
class BucketUpdate:
    key: str
    expire_at: int
    requests: int
    tokens_in: int
    tokens_out: int
    cost_nano: int


class EventAmounts(msgspec.Struct, frozen=True, gc=False):
    """What one event adds to the windows, and where. (A msgspec struct: one is made per event.)"""

    ts_s: int
    scopes: tuple[str, ...]
    requests: int
    tokens_in: int
    tokens_out: int
    cost_nano: int


def event_amounts(ev: IngestEvent | UsageEvent, now_s: int, rebuild: bool = False) -> EventAmounts | None:
    """The amounts an event adds and the time of the buckets they go into; None when nobody served it.

    Live (``rebuild=False``): when the router reserved capacity for this
    request at admission, the reservation already counted the request and its
    estimated tokens and cost in the buckets of its time; the event then adds
    only the difference between actual and estimate, to those same buckets.
    Rebuild (replay into empty windows): no reservation exists, so the full
    amounts go into the buckets of the event's time.

    An event stamped in the future (a producer's clock ahead of ours) counts
    now: it already used the provider's capacity.

    A count_tokens call is planned, never admitted: it used no capacity and
    counts in no window (one with a reservation, from an edge before that,
    still settles it).
    """
    if not ev.provider or (ev.endpoint == COUNT_TOKENS_ENDPOINT and ev.reservation is None):
        return None
    tin, tout = _uint(ev.tokens_in), _uint(ev.tokens_out)
    cost = cost_nano(ev.cost_usd)
    r = ev.reservation
    if r is not None and not rebuild and r.provider == ev.provider:
        return EventAmounts(min(r.at_s, now_s), _scopes(r.provider, r.model, r.key_id),
                            0, tin - r.tokens_in, tout - r.tokens_out, cost - r.cost_nano)
    return EventAmounts(min(math.floor(epoch_s(ev.ts)), now_s), _scopes(ev.provider, ev.model, ev.key_id), 1, tin,
                        tout, cost)


def key_amounts(ev: IngestEvent | UsageEvent, now_s: int, rebuild: bool = False) -> EventAmounts | None:
    """What an event adds to its gateway key's own windows (and calendar month) beyond ``event_amounts``: the
    full amounts, when its reservation reserved nothing there. That is a request admitted from a capacity
    lease the keys without limits share (the edge leases per key only for a key with limits) or by a router
    that did not know the key yet: its reservation names no key, so ``event_amounts`` settles actual -
    estimate in the provider's and the model's scopes only, and the key counts the request here, once, in
    the buckets of the reservation's time (where a per-request admission reserves it in the key's scope).
    None otherwise: the key is counted by ``event_amounts`` (reserved at admission, or a rebuild's full
    amounts), or the event has no key."""
    r = ev.reservation
    if (rebuild or r is None or r.key_id or not ev.key_id or not ev.provider or r.provider != ev.provider
            or ev.endpoint == COUNT_TOKENS_ENDPOINT):
        return None
    return EventAmounts(min(r.at_s, now_s), _key_scopes(ev.key_id), 1, _uint(ev.tokens_in), _uint(ev.tokens_out),
                        cost_nano(ev.cost_usd))


@functools.lru_cache(maxsize=4096)
def _key_scopes(key_id: str) -> tuple[str, ...]:
    return (key_scope(key_id),)


def live_buckets(scopes: Sequence[str], ts_s: int, now_s: int, budget_tz: str = "UTC") -> list[tuple[str, int]]:
    """(key, expire_at) of every bucket of every window that time ``ts_s`` falls in and that has not expired;
    for a gateway key's scope also its calendar month (its budgets) in ``budget_tz``."""
    out = []
    for scope in scopes:
        for w in WINDOWS:
            start = bucket_start(ts_s, w.bucket_s)
            expire_at = bucket_expire_at(start, w)
            if expire_at > now_s:
                out.append((bucket_key(scope, w.bucket_s, start), expire_at))
        if scope.startswith("k:"):
            key, expire_at = _month(scope, ts_s - ts_s % 900, budget_tz)
            if expire_at > now_s:
                out.append((key, expire_at))
    return out


def window_updates(ev: UsageEvent, now_s: int, rebuild: bool = False) -> list[BucketUpdate]:
    """Every bucket the event adds to (see ``event_amounts`` and ``key_amounts``), skipping buckets already
    expired."""
    parts = [a for a in (event_amounts(ev, now_s, rebuild), key_amounts(ev, now_s, rebuild)) if a is not None]
    return [BucketUpdate(key, expire_at, a.requests, a.tokens_in, a.tokens_out, a.cost_nano)
            for a in parts for key, expire_at in live_buckets(a.scopes, a.ts_s, now_s)]


# grouping by the smallest bucket is only right if every other bucket is a multiple of it
assert all(w.bucket_s % WINDOWS[0].bucket_s == 0 for w in WINDOWS)

# Applies a batch of events to the windows atomically and idempotently, in a few commands per batch rather
# than per event: events that go into the same buckets (same scopes, same 5-second bucket: every longer
# bucket is a multiple of it) share a group, so the script sums them and touches each bucket once; the
# events admitted from one capacity lease read its state and add to its settled amounts once.
# ARGV: seen_ttl_s, scopes_key, seen key prefix, then JSON arrays (one argument each instead of several per
# event: encoding thousands of arguments one by one was most of the writer's time):
#   4 groups: [[[bucket_key, expire_at, ...], [scope, ...]], ...]
#   5 seen sets: [[set key, expire_at], ...] (``windows.seen_set``)
#   6 events: [event_id, seen set (1-based; 0: a key of its own), group (1-based), req, tin, tout, cost, ...]
#   7 admission leases these events settle (llmgw_common.leases): they will never be taken for abandoned
#   8 events admitted from a capacity lease (llmgw_router.capacity_leases), 14 values each:
#     [event_id, seen set, lease id, settle group, full group, settle tin, tout, cost, full tin, tout, cost,
#      estimate tin, tout, cost, ...]
#   9 what events of 6 and 8 add to their key's scope besides (``key_amounts``: a reservation that reserved
#     nothing there), one request and its full amounts whatever their lease's state, 5 values each:
#     [event_id, group, tin, tout, cost, ...]; applied with its event, never alone
# Idempotent: an event is applied only if it was not before. A ULID id (every id the gateway makes) is looked
# up in the set of its id's minute (SMISMEMBER: one command per set for the whole batch, then one SADD and
# one EXPIREAT) and, for the events applied before sets were used, as a key of its own (one EXISTS for the
# whole batch; per event only when that finds any); any other id has a key of its own (SET NX EX, one command
# per event). An id twice in one batch counts once.
# While a lease's record says live or returned, its events settle their share (actual - estimate) and the
# lease counts them as settled (its reaper gives back only what no event settled); once the reaper has given
# the lease back ("reaped"), they count in full. Each request is thus counted once.
# Returns the number of events applied now.
APPLY_EVENTS_LUA = """
local ttl = tonumber(ARGV[1])
local scopes_key = ARGV[2]
local seen_prefix = ARGV[3]
local groups = cjson.decode(ARGV[4])
local seen_sets = cjson.decode(ARGV[5])
local events = cjson.decode(ARGV[6])
local settled = cjson.decode(ARGV[7])
local leased = cjson.decode(ARGV[8])
local keyed = cjson.decode(ARGV[9])

-- which events are new: (array, first index, stride) of both kinds, their ids by seen set
local kinds = {{events, 7}, {leased, 14}}
local ids_of_set = {}
for s = 1, #seen_sets do ids_of_set[s] = {} end
local old_keys = {}
local new = {}
for _, kind in ipairs(kinds) do
  local list, stride = kind[1], kind[2]
  for i = 1, #list, stride do
    if list[i + 1] == 0 then
      if redis.call('SET', seen_prefix .. list[i], '1', 'NX', 'EX', ttl) then new[list[i]] = true end
    else
      table.insert(ids_of_set[list[i + 1]], list[i])
      table.insert(old_keys, seen_prefix .. list[i])
    end
  end
end
local done = {}  -- id -> true: applied already (or earlier in this batch)
if #old_keys > 0 and redis.call('EXISTS', unpack(old_keys)) > 0 then
  for _, key in ipairs(old_keys) do
    if redis.call('EXISTS', key) == 1 then done[string.sub(key, #seen_prefix + 1)] = true end
  end
end
for s = 1, #seen_sets do
  local ids = ids_of_set[s]
  if #ids > 0 then
    local member = redis.call('SMISMEMBER', seen_sets[s][1], unpack(ids))
    local added = {}
    for k = 1, #ids do
      if member[k] == 0 and not done[ids[k]] then
        done[ids[k]] = true
        new[ids[k]] = true
        table.insert(added, ids[k])
      end
    end
    if #added > 0 then
      redis.call('SADD', seen_sets[s][1], unpack(added))
      redis.call('EXPIREAT', seen_sets[s][1], seen_sets[s][2])
    end
  end
end

if #settled > 0 then
  local leases = {}
  for k, member in ipairs(settled) do leases[k] = '$LEASE_PREFIX' .. member end
  redis.call('ZREM', '$LEASES', unpack(settled))
  redis.call('DEL', unpack(leases))
end

local sums, hit = {}, {}
for g = 1, #groups do sums[g] = {0, 0, 0, 0} end
local applied = 0
local now_applied = {}  -- id -> true: applied in this run (its key's share, if any, goes with it)
for i = 1, #events, 7 do
  if new[events[i]] then
    new[events[i]] = nil  -- the same id twice in the batch counts once
    now_applied[events[i]] = true
    local g = events[i + 2]
    local sum = sums[g]
    for f = 1, 4 do sum[f] = sum[f] + events[i + 2 + f] end
    hit[g] = true
    applied = applied + 1
  end
end
local state_of, settled_by = {}, {}  -- lease id -> its state ('' when gone), -> {n, tin, tout, cost}
local lease_ids = {}
for i = 1, #leased, 14 do
  if new[leased[i]] then
    new[leased[i]] = nil
    now_applied[leased[i]] = true
    local id = leased[i + 2]
    local state = state_of[id]
    if state == nil then
      state = redis.call('HGET', '$CAP_LEASE_PREFIX' .. id, 'state') or ''
      state_of[id] = state
    end
    local g, req, at = leased[i + 3], 0, i + 5
    if state == 'reaped' then
      g, req, at = leased[i + 4], 1, i + 8
    elseif state ~= '' then
      local by = settled_by[id]
      if by == nil then
        by = {0, 0, 0, 0}
        settled_by[id] = by
        table.insert(lease_ids, id)
      end
      by[1] = by[1] + 1
      for f = 2, 4 do by[f] = by[f] + leased[i + 9 + f] end
    end
    local sum = sums[g]
    sum[1] = sum[1] + req
    for f = 2, 4 do sum[f] = sum[f] + leased[at + f - 2] end
    hit[g] = true
    applied = applied + 1
  end
end
for i = 1, #keyed, 5 do
  if now_applied[keyed[i]] then
    now_applied[keyed[i]] = nil  -- once, however often the batch repeats the event
    local sum = sums[keyed[i + 1]]
    sum[1] = sum[1] + 1
    for f = 2, 4 do sum[f] = sum[f] + keyed[i + f] end
    hit[keyed[i + 1]] = true
  end
end
local applied_fields = {'applied_n', 'applied_tin', 'applied_tout', 'applied_cost'}
for _, id in ipairs(lease_ids) do
  local by = settled_by[id]
  for f = 1, 4 do
    if by[f] ~= 0 then
      redis.call('HINCRBY', '$CAP_LEASE_PREFIX' .. id, applied_fields[f], string.format('%.0f', by[f]))
    end
  end
end

local fields = {'req', 'tin', 'tout', 'cost'}
for g, group in ipairs(groups) do
  if hit[g] then
    local buckets, sum = group[1], sums[g]
    for b = 1, #buckets, 2 do
      for f = 1, 4 do
        local v = sum[f]
        if v ~= 0 then  -- also keeps Lua's "-0" away from HINCRBY
          redis.call('HINCRBY', buckets[b], fields[f], string.format('%.0f', v))
        end
      end
      redis.call('EXPIREAT', buckets[b], buckets[b + 1])
    end
    for _, scope in ipairs(group[2]) do
      redis.call('SADD', scopes_key, scope)
    end
  end
end
return applied
"""


def seen_key(event_id: str) -> str:
    """The key that says an event was applied: every id before seen sets, an id not a ULID since."""
    return f"{SEEN_PREFIX}{event_id}"


def window_script_args(events: Iterable[IngestEvent | UsageEvent], now_s: int,
                       rebuild: bool = False, budget_tz: str = "UTC") -> list[Any] | None:
    """ARGV for ``APPLY_EVENTS_LUA``; events nobody served (no scope) are left out. None: nothing to apply."""
    group_of: dict[tuple[tuple[str, ...], int], int] = {}
    groups: list[list] = []
    set_of: dict[str, int] = {}
    seen_sets: list[list] = []
    flat: list[Any] = []
    settled: list[str] = []  # admission leases ended by these events
    leased: list[Any] = []  # events admitted from a capacity lease: how they count is decided in Redis
    keyed: list[Any] = []  # what events add to their key's scope, whose reservation reserved nothing there
    step = WINDOWS[0].bucket_s

    def group_for(a: EventAmounts) -> int:
        signature = (a.scopes, a.ts_s - a.ts_s % step)
        group = group_of.get(signature)
        if group is None:
            group = group_of[signature] = len(groups) + 1
            buckets: list[Any] = []
            for key, expire_at in live_buckets(a.scopes, a.ts_s, now_s, budget_tz):
                buckets += [key, expire_at]
            groups.append([buckets, list(a.scopes)])
        return group

    def seen_set_for(ev: IngestEvent | UsageEvent) -> int:
        made_ms = id_time_ms(ev.id)
        if made_ms is None:
            return 0  # a key of its own
        key, expire_at = seen_set(made_ms, now_s)
        index = set_of.get(key)
        if index is None:
            index = set_of[key] = len(seen_sets) + 1
            seen_sets.append([key, expire_at])
        return index

    for ev in events:
        a = event_amounts(ev, now_s, rebuild)
        if a is None:
            continue
        r = ev.reservation
        key = key_amounts(ev, now_s, rebuild)
        if key is not None:
            keyed += [ev.id, group_for(key), key.tokens_in, key.tokens_out, key.cost_nano]
        if r is not None and r.lease and not rebuild and r.provider == ev.provider:
            full = event_amounts(ev, now_s, rebuild=True)
            assert full is not None  # it has a provider, as ``a`` says
            if key is not None:  # a reaped lease's event counts in full where the lease reserved; its key above
                full = msgspec.structs.replace(full, scopes=_scopes(ev.provider, ev.model))
            leased += [ev.id, seen_set_for(ev), r.lease, group_for(a), group_for(full), a.tokens_in, a.tokens_out,
                       a.cost_nano, full.tokens_in, full.tokens_out, full.cost_nano, r.tokens_in, r.tokens_out,
                       r.cost_nano]
            continue
        flat += [ev.id, seen_set_for(ev), group_for(a), a.requests, a.tokens_in, a.tokens_out, a.cost_nano]
        if r is not None and not rebuild:
            settled.append(lease_member(ev.request_id, r.provider))
    if not flat and not leased:
        return None
    return [SEEN_TTL_S, SCOPES_KEY, SEEN_PREFIX, _to_json(groups), _to_json(seen_sets), _to_json(flat), _to_json(settled),
            _to_json(leased), _to_json(keyed)]


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
