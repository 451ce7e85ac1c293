"""Every message that crosses NATS, JSON with a schema version: pydantic models, and msgspec structs for
the messages of the hot path (``FastMessage``: one or more per request)."""

from __future__ import annotations

import functools
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Literal, TypeVar

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .config import Price
from .ids import new_id


def _in_utc(value: datetime) -> datetime:
    """A query's time in UTC (naive: UTC already); one that UTC cannot hold (0001-01-01T00:01+01:00) is a
    validation error, a 400, not an OverflowError deep in a query."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("a time UTC cannot hold") from None


QueryTime = Annotated[datetime, AfterValidator(_in_utc)]

SCHEMA_VERSION = 1

M = TypeVar("M", bound="Message")
F = TypeVar("F", bound="FastMessage")
B = TypeVar("B", bound=BaseModel)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer senders may add fields

    schema_version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        return cls.model_validate_json(data)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---- the hot path: msgspec structs ---------------------------------------------------------------

class FastMessage(msgspec.Struct, kw_only=True):
    """A message sent or read once per request (or more): a msgspec struct, several times cheaper to build,
    encode and decode than a pydantic model, with the same JSON on the wire (names, ``schema_version``,
    unknown keys ignored, every field written), so an edge and a router of different versions still talk.

    A pydantic model inside one (the config's ``Price``, the usage event's ``Reservation``) keeps its one
    definition: it is encoded and validated by pydantic, through the hooks below. A message that does not
    decode raises a ``msgspec.ValidationError`` (a ``ValueError``) saying where: the service runtime answers
    it 400 (``service.bad_request``)."""

    schema_version: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls: type[F], data: bytes) -> F:
        return _decoder(cls).decode(data)


def _pydantic_to_json(obj: object) -> object:
    if isinstance(obj, BaseModel):  # its JSON as pydantic writes it, spliced in as it is
        return msgspec.Raw(obj.__pydantic_serializer__.to_json(obj))
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


# every decision carries each candidate's price, and there are few prices: each is validated once, then the
# same (never changed) object is shared by every decision that carries it
_PRICES: dict[tuple, Price] = {}
MAX_PRICES = 4096


def _pydantic_from_json(tp: type, obj: object) -> object:
    if tp is Price and isinstance(obj, dict):
        try:
            key = tuple(obj.items())
            return _PRICES[key]
        except (KeyError, TypeError):  # new, or not hashable (malformed: validation says so)
            pass
        price = _validated(Price, obj)
        if len(_PRICES) >= MAX_PRICES:
            _PRICES.clear()
        _PRICES[key] = price
        return price
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _validated(tp, obj)
    raise NotImplementedError(f"cannot decode {tp}")


def _validated(tp: type[B], obj: object) -> B:
    try:
        return tp.model_validate(obj)
    except ValidationError as exc:  # one line; msgspec adds where the model sits in the message
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc'])) or tp.__name__}: {first['msg']}") from None


_ENCODER = msgspec.json.Encoder(enc_hook=_pydantic_to_json)


@functools.cache
def _decoder(cls: type[F]) -> msgspec.json.Decoder[F]:
    return msgspec.json.Decoder(cls, dec_hook=_pydantic_from_json)


# ---- errors carried in replies ---------------------------------------------

class ErrorInfo(msgspec.Struct, kw_only=True):
    status: int
    code: str
    message: str
    retry_after_s: float | None = None  # a 429: when capacity frees up (the window or cooldown that refused)


# ---- router ----------------------------------------------------------------

# why a request went to another model (a routing.fallbacks table): the prompt is longer than the model's
# context window, or the model refused on content policy
FallbackKind = Literal["context_window", "content_filter"]

# a RouteRequest's endpoint for a question that needs the router's plan only, never capacity (count_tokens):
# candidates in order, cooling and broken providers skipped, nothing reserved in any window
PLAN_ONLY_ENDPOINT = "plan"


class RouteRequest(FastMessage, kw_only=True):
    request_id: str
    model: str
    stream: bool = False
    estimated_prompt_tokens: int = 0
    max_tokens: int | None = None
    key_id: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # lower-case names, credentials removed
    prompt_class: str | None = None
    exclude: list[str] = msgspec.field(default_factory=list)  # providers already tried for this request
    event_id: str | None = None  # the request's usage event id, chosen first: the admission lease names it
    endpoint: str = "chat"  # chat | embeddings | plan (PLAN_ONLY_ENDPOINT): what the client asked for
    needs: list[str] = msgspec.field(default_factory=list)  # capabilities the request uses (config.Capabilities), sorted
    # set after an upstream refused the model for what the request is: plan its routing.fallbacks models
    fallback: FallbackKind | None = None
    exclude_from: int = 0  # ``exclude`` counts from here: the fallback models start afresh on every provider
    # prompt-cache affinity (llmgw_router.cache_affinity): the hash of the request's cacheable prefix and that
    # prefix's estimated tokens; None when the prefix is too short to be cached or affinity is off
    prefix_key: str | None = None
    prefix_tokens: int = 0


class AdmissionGiveUp(msgspec.Struct, kw_only=True):
    """A routing question the edge gave up on (no answer in time, the router's error, its client gone)."""

    request_id: str
    attempt: int = 0  # the providers it excluded: RouteRequest.exclude's length


class AdmissionGiveUps(FastMessage, kw_only=True):
    """Questions the edge gave up on, sent together: the router releases whatever it admits, or already
    admitted, for each (llmgw_router.store.GIVE_UP_LUA)."""

    items: Annotated[list[AdmissionGiveUp], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)
    released: int | None = None  # in the router's reply: how many admissions were released


class Reservation(BaseModel):
    """What admission counted in the live windows ahead of the real usage (reconciled later). A pydantic
    model: the usage event carries it too (its ingest derives a struct from it, ``structs.py``)."""

    provider: str
    model: str  # logical
    at_s: int  # epoch seconds of the buckets it went into
    tokens_in: int
    tokens_out: int
    cost_nano: int
    key_id: str | None = None  # the gateway key whose windows and month it also went into
    lease: str | None = None  # the capacity lease it was admitted from (llmgw_router.capacity_leases), if any


class Candidate(msgspec.Struct, kw_only=True):
    provider: str
    model: str  # logical model name
    upstream_model: str
    price: Price | None = None  # None: unknown price
    free: bool = False
    reason: str = ""
    reservation: Reservation | None = None  # set on the admitted candidate only
    probe: bool = False  # admitted as the half-open breaker's one probe: its outcome decides the breaker


class Skipped(msgspec.Struct, kw_only=True):
    provider: str
    reason: str


class RouteDecision(FastMessage, kw_only=True):
    """``candidates[0]`` is admitted (its reservation made); the rest are the fallback order."""

    request_id: str
    model: str
    candidates: list[Candidate] = msgspec.field(default_factory=list)
    skipped: list[Skipped] = msgspec.field(default_factory=list)
    strategy: str = "priority"
    rule: str | None = None  # name of the rule that matched
    error: ErrorInfo | None = None
    # > 0: nothing in this plan draws on a limit; the edge may route every request with the same model, key
    # and prompt class on it, without asking, for this long or until ``ROUTER_CHANGED`` (docs/routing.md)
    reusable_s: float = 0.0
    # a reusable plan under a strategy the edge runs itself (round-robin, weighted, least-busy, lowest-latency):
    # each candidate's group (same pin, tier, smart match); the edge orders each group for every request
    groups: list[int] = msgspec.field(default_factory=list)
    # the routing.fallbacks kind (context_window | content_filter) whose models these candidates are, if any
    fallback: str | None = None


class AttemptOutcome(FastMessage, kw_only=True):
    """Published by the edge after every upstream attempt; routers learn health from it."""

    request_id: str
    provider: str
    model: str
    ok: bool
    status: int  # 0: no HTTP response
    latency_ms: float
    retry_after_s: float | None = None  # from Retry-After / rate-limit reset headers on a 429
    reservation: Reservation | None = None  # released when the attempt failed
    kind: str | None = None  # llmgw_common.failures.FailureKind of a failed attempt (None: judge by status)
    prefix_key: str | None = None  # a success: this provider now holds the request's prefix in its prompt cache


class AttemptOutcomes(FastMessage, kw_only=True):
    """Successful attempts, batched by the edge (a failure or a probe goes alone, at once)."""

    outcomes: Annotated[list[AttemptOutcome], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)


class LeaseRenewal(FastMessage, kw_only=True):
    """The edge's requests still running (long streams): extend their admission leases."""

    # leases.lease_member(request, provider)
    members: Annotated[list[str], msgspec.Meta(max_length=10_000)] = msgspec.field(default_factory=list)
    extend_s: float = 120.0


# ---- router, not per request: pydantic ---------------------------------------------------------------

class PinCommand(Message):
    provider: str | None = None  # None: back to automatic routing


class SmartCommand(Message):
    enabled: bool | None = None  # None: toggle


class RouterStateQuery(Message):
    pass


class WindowState(BaseModel):
    """One sliding window of a provider or model against its configured limits (None: no limit)."""

    requests: int = 0
    requests_limit: int | None = None
    tokens: int = 0
    tokens_limit: int | None = None
    cost_usd: str = "0"  # a decimal as text: exact on every side
    cost_limit_usd: str | None = None


class ModelState(BaseModel):
    name: str
    upstream: str
    windows: dict[str, WindowState] = Field(default_factory=dict)  # by window name: minute, hour, day


class ProviderState(BaseModel):
    id: str
    enabled: bool = True
    free_tier: bool = False
    priority: int = 0
    pinned: bool = False
    inflight: int = 0
    latency_ms: float | None = None  # moving average; None: no request yet
    cooldown_s: float = 0.0  # 0: no cooldown
    breaker: str = "closed"  # closed | open | half-open
    windows: dict[str, WindowState] = Field(default_factory=dict)
    models: list[ModelState] = Field(default_factory=list)


class RouterState(Message):
    pinned: str | None = None
    smart: bool = False
    providers: list[ProviderState] = Field(default_factory=list)


# ---- pricing ---------------------------------------------------------------

class PriceKey(BaseModel):
    provider: str
    model: str  # upstream model name


class PriceInfo(BaseModel):
    provider: str
    model: str
    price: Price | None
    # config: the provider model's price or pricing.overrides; remote: fetched from the public source
    # now; cache: an earlier fetch kept on disk; bundled: the snapshot shipped with the pricing service
    source: Literal["config", "remote", "cache", "bundled", "unknown"]
    matched: str | None = None  # the price-table or override key that matched
    as_of: datetime | None = None  # when that price data was fetched or snapshotted
    # what the price tables say the model can serve (config.Capabilities names; the config's own win)
    capabilities: dict[str, bool] = Field(default_factory=dict)


class PriceLookup(Message):
    keys: list[PriceKey]


class PricingStatus(BaseModel):
    """Where the pricing service's table prices come from right now."""

    table: Literal["remote", "cache", "bundled"]
    table_as_of: datetime | None = None
    table_origin: str = ""  # URL (without credentials or query) or bundled snapshot origin
    table_size: int = 0
    source_url: str | None = None  # configured public source (without credentials or query)
    last_fetch_at: datetime | None = None
    last_fetch_ok: bool | None = None
    last_fetch_error: str | None = None
    bundled_as_of: datetime | None = None
    bundled_origin: str = ""


class PriceList(Message):
    prices: list[PriceInfo]
    status: PricingStatus | None = None  # set in answers to PRICING_LIST


class PricingChanged(Message):
    changed_at: datetime = Field(default_factory=utcnow)
    reason: str = ""  # "start", "fetch", "config"
    changed: list[PriceKey] = Field(default_factory=list)  # configured models whose effective price or source changed


# ---- config ----------------------------------------------------------------

class ConfigChanged(Message):
    """``llmgw.config.changed``: ui-api wrote a new config revision (informational: every process follows
    the config bucket itself)."""

    etag: str | None = None  # of the text written
    version: str | None = None  # the revision written (the bucket's revision number)


class ConfigRevision(Message):
    """One process's answer on ``llmgw.config.revisions``: the config revision it runs."""

    service: str
    instance: str
    revision: int  # 0: none stored (defaults)
    latest: int  # the newest revision it has seen (greater than ``revision``: that one was invalid)


# ---- usage -----------------------------------------------------------------

class Attempt(BaseModel):
    provider: str
    upstream_model: str
    status: int  # HTTP status from upstream; 0 = no response (connection error, timeout)
    error: str | None = None
    latency_ms: float
    retries: int = 0  # extra tries on this provider before this outcome


# a usage event's endpoint for Anthropic's count_tokens: logged, never counted in a window (it used no capacity)
COUNT_TOKENS_ENDPOINT = "messages.count_tokens"


class UsageEvent(Message):
    """One client request, after it finished. Immutable fact; ``id`` is the dedup key.

    Tokens: ``tokens_in`` is the whole prompt, cache reads and cache writes included; ``tokens_out`` the
    whole output, reasoning included. The other counters are parts of those two, never added to them:
    ``tokens_cached`` cache reads (OpenAI/Gemini ``cached_tokens``, Anthropic ``cache_read_input_tokens``)
    and ``tokens_cache_write`` cache writes (Anthropic ``cache_creation_input_tokens``), both within
    ``tokens_in``; ``tokens_reasoning`` reasoning (thinking) tokens within ``tokens_out``. An event from
    before these counters existed reads as 0 for them."""

    id: str = Field(default_factory=new_id)
    ts: datetime = Field(default_factory=utcnow)
    request_id: str
    endpoint: str = "chat.completions"
    key_id: str | None = None
    provider: str | None = None  # who served it (None when nobody did)
    model: str  # what the client asked for
    upstream_model: str | None = None
    stream: bool = False
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # cache reads: part of tokens_in
    tokens_cache_write: int = 0  # cache writes (cache creation): part of tokens_in
    tokens_reasoning: int = 0  # reasoning (thinking) tokens: part of tokens_out
    cost_usd: Decimal = Decimal(0)
    # what the cache reads saved: tokens_cached at the input price minus at the cache-read price (0 when the
    # provider reported its own cost or has no cache-read price); not part of cost_usd
    cache_saved_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int  # status the client got
    error: str | None = None
    # how many client requests this event stands for: 1, or more for requests refused before routing that an
    # edge aggregated into one event beyond its rate (docs/reliability.md, "Refused requests")
    requests: int = 1
    attempts: list[Attempt] = Field(default_factory=list)
    route_reason: str = ""
    # the admission reservation of the provider that served it: the live windows
    # add (actual - reserved) instead of the full amounts
    reservation: Reservation | None = None
    # optional captured bodies: off by default (nothing captures them yet); the usage
    # service redacts and size-caps them into ClickHouse request_bodies (7-day TTL)
    request_body: str | None = None
    response_body: str | None = None


# Query and reply sizes: a filter value is at most as long as what an event may hold (256 characters, see
# llmgw_usage.domain); replies whose size depends on the data are cut to the NATS max payload and carry a
# ``next_cursor`` (None: nothing more), passed back as ``cursor`` for the rest.
FILTER_MAX_CHARS = 256


class UsageCurrentQuery(Message):
    cursor: str | None = Field(default=None, max_length=1024)  # next_cursor of the previous page


class WindowTotals(BaseModel):
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Decimal = Decimal(0)


class ScopeUsage(BaseModel):
    scope: Literal["provider", "model", "key"]
    provider: str  # for a key scope: the key id
    model: str | None = None
    windows: dict[str, WindowTotals]  # "minute" | "hour" | "day"


class UsageCurrent(Message):
    at: datetime = Field(default_factory=utcnow)
    scopes: list[ScopeUsage] = Field(default_factory=list)
    next_cursor: str | None = None  # None: every scope is in this reply


class KeyUsageQuery(Message):
    """One gateway key's live windows and calendar month (``llmgw.usage.query.key``)."""

    key_id: str = Field(pattern=r"^[a-z0-9]{12}$")


class DayTotals(WindowTotals):
    day: date  # a calendar day in the key's budget time zone


class KeyUsage(Message):
    at: datetime = Field(default_factory=utcnow)
    key_id: str
    windows: dict[str, WindowTotals] = Field(default_factory=dict)  # "minute" | "hour" | "day" of scope k:<id>
    month: str  # YYYY-MM, in ``timezone`` (config keys.budget_timezone)
    timezone: str = "UTC"
    month_start: datetime
    month_end: datetime
    month_totals: WindowTotals = Field(default_factory=WindowTotals)
    # every day of the month, first to last (zeros ahead), from ClickHouse's per-minute rollup; None when
    # ClickHouse could not be read (the live windows and month totals above come from Redis)
    days: list[DayTotals] | None = None


class UsageHistoryQuery(Message):
    since: QueryTime | None = None
    until: QueryTime | None = None
    bucket_s: int = Field(default=60, ge=60, le=86400)
    provider: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    model: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    limit: int = Field(default=10_000, gt=0, le=100_000)  # rows at most, over all pages
    key_id: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    status_class: Literal["ok", "error"] | None = None  # ok: status < 400; error: status >= 400
    # the dimensions of a row (besides its bucket); a dimension left out is "" in the rows
    group_by: list[Literal["provider", "model", "key_id"]] = ["provider", "model"]  # pydantic copies it per instance
    top: int | None = Field(default=None, gt=0, le=1000)  # only the N groups with the most `order_by` in the range
    order_by: Literal["requests", "errors", "tokens", "cost"] = "requests"
    cursor: str | None = Field(default=None, max_length=8192)  # next_cursor of the previous page


class HistoryRow(BaseModel):
    bucket: datetime
    provider: str
    model: str
    requests: int
    errors: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    key_id: str = ""
    tokens_cached: int = 0  # parts of tokens_in / tokens_out, as in UsageEvent
    tokens_cache_write: int = 0
    tokens_reasoning: int = 0
    free_requests: int = 0  # cost 0 and status < 400
    latency_ms_sum: float = 0.0  # average latency = latency_ms_sum / requests


class UsageHistory(Message):
    rows: list[HistoryRow] = Field(default_factory=list)
    # one row per group over the whole range (bucket = its first bucket), largest first when `top` was asked
    totals: list[HistoryRow] = Field(default_factory=list)
    source: str = ""  # "usage_minute" (the rollup) or "usage_events" (raw, when the query needs it)
    # the answer did not fit one reply: ask again with cursor=next_cursor for the rest (totals first, then
    # rows, each page going on where the last one stopped); None: this page ends the answer
    next_cursor: str | None = None


class UsageStatsQuery(Message):
    """Errors and latency per provider and per model over a range (``llmgw.usage.query.stats``)."""

    since: QueryTime
    until: QueryTime | None = None  # None: now
    limit: int = Field(default=500, gt=0, le=2000)  # rows at most, the busiest first


class StatsRow(BaseModel):
    provider: str
    model: str | None = None  # None: the provider as a whole
    requests: int = 0  # from the per-minute rollup
    errors: int = 0  # status >= 400
    rate_limited: int = 0  # status 429 (from the request log)
    error_rate: float = 0.0  # errors / requests
    # percentiles over the successful requests (status < 400) in the request log; None: none had one
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None  # time to first token (streams)
    ttft_p95_ms: float | None = None
    # prompt caching (from the rollup): the prompt tokens read from a provider's cache, their share of all
    # prompt tokens (the cache hit rate), and what those reads saved against the input price
    tokens_in: int = 0
    tokens_cached: int = 0
    cache_hit_rate: float = 0.0
    cache_saved_usd: Decimal = Decimal(0)


class UsageStats(Message):
    since: datetime  # the start of since's minute (the rollup's resolution)
    until: datetime
    rows: list[StatsRow] = Field(default_factory=list)  # per provider, each followed by its models
    truncated: bool = False  # more groups than the limit (or one reply) holds: the quietest left out


class UsageRequestsQuery(Message):
    """One page of the request log, newest first. ``cursor``: ``next_cursor`` of the previous page."""

    since: QueryTime | None = None
    until: QueryTime | None = None
    provider: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    model: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    key_id: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    request_id: str | None = Field(default=None, max_length=FILTER_MAX_CHARS)
    status: int | None = Field(default=None, ge=0, le=999)
    status_class: Literal["ok", "error"] | None = None
    limit: int = Field(default=100, gt=0, le=1000)
    cursor: str | None = Field(default=None, max_length=200)
    include_bodies: bool = False


class RequestLogRow(BaseModel):
    id: str
    ts: datetime
    request_id: str
    endpoint: str
    key_id: str
    provider: str
    model: str
    upstream_model: str
    stream: bool
    status: int
    error: str | None = None
    requests: int = 1  # more than 1: refusals an edge aggregated into this one event (UsageEvent.requests)
    latency_ms: float
    ttft_ms: float | None = None
    route_reason: str
    retries: int  # upstream tries beyond the first (retries on a provider plus fail-overs)
    tokens_in: int
    tokens_out: int
    tokens_cached: int  # parts of tokens_in / tokens_out, as in UsageEvent
    tokens_cache_write: int = 0
    tokens_reasoning: int = 0
    cost_usd: Decimal
    attempts: list[Attempt] = Field(default_factory=list)
    request_body: str | None = None  # only with include_bodies, and only when captured
    response_body: str | None = None
    # cut to fit a reply on its own (a NATS max payload far below the default): bodies dropped, long texts
    # and the attempts list shortened
    truncated: bool = False


class UsageRequests(Message):
    """A page holds at most ``limit`` rows, fewer when more would not fit one reply (NATS max payload)."""

    rows: list[RequestLogRow] = Field(default_factory=list)
    next_cursor: str | None = None  # None: this was the last page


class UsageReplayBatch(Message):
    """Events read back from the stream by ``llmgw replay``, for the usage service to insert into
    ClickHouse (it owns the chDB directory). Idempotent: events already stored are skipped."""

    events: list[UsageEvent] = Field(default_factory=list)
    dry_run: bool = False


class UsageReplayResult(Message):
    received: int = 0
    inserted: int = 0  # new in ClickHouse (with dry_run: would be)
    already: int = 0  # were there before
    busy: list[str] = Field(default_factory=list)  # ids another writer is inserting right now: send again later


class UsageSimulate(Message):
    """Dev only (usage service with LLMGW_DEV_SIMULATE=1): publish synthetic usage events to the stream."""

    count: int = Field(default=100, gt=0, le=10_000)
    providers: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["sim-free", "sim-paid"], min_length=1, max_length=50)
    models: list[Annotated[str, Field(min_length=1, max_length=FILTER_MAX_CHARS)]] = Field(
        default_factory=lambda: ["sim-small", "sim-large"], min_length=1, max_length=50)
    key_ids: list[Annotated[str, Field(min_length=1, max_length=FILTER_MAX_CHARS)]] = Field(
        default_factory=lambda: ["sim-key"], min_length=1, max_length=50)
    spread_s: int = Field(default=60, ge=0, le=7 * 86400)  # timestamps spread over the last spread_s seconds
    error_rate: float = Field(default=0.05, ge=0, le=1)
    seed: int | None = None


class UsageSimulated(Message):
    published: int = 0
    ids: list[str] = Field(default_factory=list)


class UsageDeadLettersQuery(Message):
    """The dead letters (stream messages the usage consumer refused), newest first."""

    cursor: int | None = Field(default=None, ge=1)  # next_cursor of the previous page (a dead-letter sequence)
    limit: int = Field(default=50, gt=0, le=500)
    reason: str | None = Field(default=None, max_length=64)  # only this reason
    count_only: bool = False  # only total and by_reason


class DeadLetter(BaseModel):
    seq: int  # sequence in LLMGW_USAGE_DLQ
    at: datetime  # when it was refused
    reason: str  # the code: its subject's last token
    detail: str  # what was wrong, in words
    subject: str  # the original message's subject
    stream_seq: int | None = None  # the original message's sequence in LLMGW_USAGE
    size: int  # the original message's size in bytes
    kept: int  # bytes of it the dead letter holds (all unless it was too large)
    excerpt: str  # its first bytes as text (invalid UTF-8 replaced)


class UsageDeadLetters(Message):
    total: int = 0  # dead letters held (all reasons)
    by_reason: dict[str, int] = Field(default_factory=dict)
    rows: list[DeadLetter] = Field(default_factory=list)
    next_cursor: int | None = None  # None: no older dead letter
