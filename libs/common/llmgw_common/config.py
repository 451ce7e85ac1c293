"""The gateway config: one YAML file, validated by these models.

Every service reads the same file (path from ``LLMGW_CONFIG``). Provider
secrets are either literals or ``${ENV_VAR}`` references; only the edge ever
resolves them (``resolve_secret``), and ``masked`` produces the copy that may
be shown anywhere else.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping, Union, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from .config_errors import describe, suggestion

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SECRET_MASK = "********"


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: reject them with their path.
    model_config = ConfigDict(extra="forbid")


PromptClass = Literal["code", "research", "conversation", "complex"]
# a provider type: its config class in PROVIDER_CONFIGS (below), its adapter in the edge
ProviderType = Literal["openai", "anthropic", "gemini", "copilot", "claude_code", "gemini_cli"]
# provider types paid by a flat subscription: zero marginal cost unless the config gives a price
SUBSCRIPTION_TYPES = frozenset({"copilot", "claude_code", "gemini_cli"})
Strategy = Literal["priority", "round-robin", "weighted", "least-busy", "lowest-latency", "lowest-cost"]


class Price(_Strict):
    """USD per million tokens, plus an optional fixed charge per request.

    Token parts (what ``cost`` takes): the prompt (``tokens_in``) is uncached input, cache reads
    (``cached_in``) and cache writes (``cache_write``); the output (``tokens_out``) is visible output and
    reasoning (``reasoning``). Each part has its own rate; an unset rate is the plain input or output one."""

    input_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    output_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    cached_input_per_mtok: Decimal | None = Field(default=None, ge=0, description="prompt tokens read from the "
                                                  "provider's prompt cache; unset: the input price")
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0, description="prompt tokens written to the "
                                                 "provider's prompt cache (e.g. Anthropic: 1.25x input for a "
                                                 "5-minute cache); unset: the input price")
    per_request: Decimal = Field(default=Decimal(0), ge=0)
    reasoning_per_mtok: Decimal | None = Field(default=None, ge=0, description="reasoning (thinking) output tokens; "
                                               "unset: the output price")
    monthly_fee_usd: Decimal = Field(default=Decimal(0), ge=0, description="flat rate (a subscription): marginal "
                                     "cost 0, the fee is only tracked and reported")

    @property
    def is_free(self) -> bool:
        """Zero marginal cost (a flat monthly fee alone still counts as free at the margin)."""
        return not (self.input_per_mtok or self.output_per_mtok or self.per_request or self.cached_input_per_mtok
                    or self.cache_write_per_mtok or self.reasoning_per_mtok)

    def cost(self, tokens_in: int, tokens_out: int, cached_in: int = 0, reasoning: int = 0,
             cache_write: int = 0) -> Decimal:
        """Exact marginal cost in USD; the monthly fee is never part of it.

        ``tokens_in`` is the whole prompt: it includes the cache reads ``cached_in`` and the cache writes
        ``cache_write`` (the rest, floored at 0, is priced as plain input). ``tokens_out`` is the whole
        output: it includes ``reasoning``. (OpenAI's convention; Anthropic's ``input_tokens`` excludes
        both cache counts, so add them to it first.)"""
        inp = self.input_per_mtok
        cached_price = inp if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write_price = inp if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        uncached = max(tokens_in - cached_in - cache_write, 0)
        reasoning_price = self.output_per_mtok if self.reasoning_per_mtok is None else self.reasoning_per_mtok
        visible_out = max(tokens_out - reasoning, 0)
        micro = (uncached * inp + cached_in * cached_price + cache_write * write_price
                 + visible_out * self.output_per_mtok + reasoning * reasoning_price)
        return micro / Decimal(1_000_000) + self.per_request

    def cache_read_saving(self, cached_in: int) -> Decimal:
        """What ``cached_in`` cache reads cost less than the same tokens at the input price (0 without a
        cache-read price). Cache writes' premium is not taken off: it is paid whether or not a read follows."""
        if self.cached_input_per_mtok is None or self.cached_input_per_mtok >= self.input_per_mtok:
            return Decimal(0)
        return cached_in * (self.input_per_mtok - self.cached_input_per_mtok) / Decimal(1_000_000)


class Limits(_Strict):
    """Any subset; ``None`` means unlimited. Cost limits are in USD."""

    requests_per_minute: int | None = Field(default=None, ge=0)
    requests_per_hour: int | None = Field(default=None, ge=0)
    requests_per_day: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_hour: int | None = Field(default=None, ge=0)
    tokens_per_day: int | None = Field(default=None, ge=0)
    cost_per_minute: Decimal | None = Field(default=None, ge=0)
    cost_per_hour: Decimal | None = Field(default=None, ge=0)
    cost_per_day: Decimal | None = Field(default=None, ge=0)


class Capabilities(_Strict):
    """What a model can (true) or cannot (false) serve; unset: assumed available (docs/routing.md,
    "Capabilities"). A request that uses one goes only to models that do not say false."""

    tools: bool | None = Field(default=None, description="tool / function calling")
    vision: bool | None = Field(default=None, description="images in the prompt")
    json_schema: bool | None = Field(default=None, description="structured output to a JSON schema")
    reasoning: bool | None = Field(default=None, description="reasoning effort / extended thinking")
    embeddings: bool | None = Field(default=None, description="the embeddings endpoint")

    def says(self, capability: str, otherwise: bool | None = None) -> bool | None:
        """What the config says of ``capability``, or ``otherwise`` (the price tables') when it says nothing."""
        value = getattr(self, capability, None)
        return otherwise if value is None else value


class ModelConfig(_Strict):
    name: str = Field(min_length=1, description="logical name clients ask for")
    upstream: str | None = Field(default=None, description="name the provider knows; defaults to name")
    price: Price | None = None
    context_window: int | None = Field(default=None, gt=0)
    limits: Limits = Field(default_factory=Limits)
    capabilities: Capabilities = Field(default_factory=lambda: Capabilities())

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.name


class ProviderConfig(_Strict):
    """What every provider type has. A config's provider is one of the per-type classes below, picked by
    ``type`` (``openai`` when unset); each type's own fields and checks live in its class, and a field of
    another type is an error at its path. ``ProviderConfig(type=..., ...)`` builds the right one."""

    id: str
    type: ProviderType = Field(default="openai", description="adapter: openai (any OpenAI-compatible HTTP API), "
                               "anthropic, gemini (native APIs), copilot (GitHub Copilot), claude_code / "
                               "gemini_cli (the installed CLI run as a subprocess)")
    enabled: bool = True
    free_tier: bool = Field(default=False, description="treat as zero marginal cost whatever the prices")
    priority: int = Field(default=100, description="lower is tried first within a cost tier")
    timeout_s: float = Field(default=60.0, gt=0, description="the longest silence while waiting for data: before "
                             "the answer starts and between its bytes or stream events (a CLI: between its lines)")
    total_timeout_s: float | None = Field(default=None, gt=0, description="one attempt at this provider: a whole "
                                          "non-streaming answer, or a stream until its first event; unset: only "
                                          "routing.total_timeout_s bounds it")
    models: list[ModelConfig] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    weight: int = Field(default=1, ge=0, description="share of traffic under the weighted strategy")
    specialties: list[PromptClass] = Field(default_factory=list, description="prompt classes it is good at")

    def __new__(cls, *args: Any, **data: Any) -> ProviderConfig:
        # ProviderConfig(type="gemini", ...) is a GeminiProviderConfig: the class picked, pydantic validates
        # (pydantic itself calls __new__ without fields: the class asked for)
        if cls is ProviderConfig and data:
            cls = PROVIDER_CONFIGS.get(data.get("type", "openai"), cls)
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> ProviderConfig:
        if cls is ProviderConfig:  # the class its type names, as in a config file
            return _PROVIDER_ADAPTER.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (max 63), starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _unique_models(self) -> ProviderConfig:
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} is listed twice")
            seen.add(m.name)
        return self

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


class HttpProviderConfig(ProviderConfig):
    """A provider reached over HTTP: an endpoint, a credential, extra headers, connection timeouts."""

    base_url: str | None = Field(default=None, description="unset: the type's public endpoint")
    api_key: str | None = Field(default=None, description="literal or ${ENV_VAR}")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers sent upstream")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP and TLS connection set-up")
    first_byte_timeout_s: float | None = Field(default=None, gt=0, description="from sending the request to the "
                                               "answer's status line; unset: timeout_s")

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _env_ref_shape(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("${") and not _ENV_REF.match(v):
            raise ValueError("environment references look like ${NAME}")
        return v


class OpenAIProviderConfig(HttpProviderConfig):
    """Any OpenAI-compatible API (OpenAI itself when ``base_url`` is unset)."""

    type: Literal["openai"] = "openai"
    base_url: str | None = Field(default=None, description="unset: https://api.openai.com/v1")
    responses_api: bool | None = Field(default=None, description="the upstream serves /responses itself (unset: "
                                       "only api.openai.com); else Responses requests are translated to chat")

    @model_validator(mode="after")
    def _openai_by_default(self) -> OpenAIProviderConfig:
        if self.base_url is None:
            self.base_url = "https://api.openai.com/v1"
        return self


class AnthropicProviderConfig(HttpProviderConfig):
    """Anthropic's native Messages API (api.anthropic.com when ``base_url`` is unset)."""

    type: Literal["anthropic"] = "anthropic"


class GeminiProviderConfig(HttpProviderConfig):
    """Google's native Gemini API (generativelanguage.googleapis.com when ``base_url`` is unset)."""

    type: Literal["gemini"] = "gemini"


class CopilotProviderConfig(HttpProviderConfig):
    """GitHub Copilot: a GitHub OAuth token (``token_file``, or ``api_key``) exchanged for Copilot tokens."""

    type: Literal["copilot"] = "copilot"
    responses_api: bool | None = Field(default=None, description="send Responses requests to Copilot's "
                                       "/responses (unset: translated to chat, which every model speaks)")
    token_file: str | None = Field(default=None, description="the GitHub OAuth token file (unset: "
                                   "<state dir>/copilot/<id>.json, written by `llmgw copilot login`)")


class CliProviderConfig(ProviderConfig):
    """An installed CLI run as a subprocess per request (its own login: no key, no URL, no headers)."""

    command: list[str] | None = Field(default=None, min_length=1, description="the executable and fixed "
                                      "arguments (unset: the type's CLI on the PATH)")
    max_concurrency: int = Field(default=4, ge=1, le=256, description="CLI processes at once")


class ClaudeCodeProviderConfig(CliProviderConfig):
    """The ``claude`` CLI (Claude Code)."""

    type: Literal["claude_code"] = "claude_code"


class GeminiCliProviderConfig(CliProviderConfig):
    """The ``gemini`` CLI."""

    type: Literal["gemini_cli"] = "gemini_cli"


PROVIDER_CONFIGS: dict[str, type[ProviderConfig]] = {cls.model_fields["type"].default: cls for cls in (
    OpenAIProviderConfig, AnthropicProviderConfig, GeminiProviderConfig, CopilotProviderConfig,
    ClaudeCodeProviderConfig, GeminiCliProviderConfig)}


def _provider_tag(value: Any) -> str | None:
    """A provider's type: ``openai`` when a mapping gives none (None: not a mapping, the union says so)."""
    if isinstance(value, dict):
        kind = value.get("type", "openai")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


if TYPE_CHECKING:  # to a type checker, every provider is a ProviderConfig; to pydantic, the union of the types
    AnyProvider = ProviderConfig
else:
    AnyProvider = Annotated[
        Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in PROVIDER_CONFIGS.items())],  # noqa: UP007
        Discriminator(_provider_tag, custom_error_type="provider_type",
                      custom_error_message="unknown provider type",
                      custom_error_context={"types": ", ".join(get_args(ProviderType))}),
    ]
_PROVIDER_ADAPTER: TypeAdapter[ProviderConfig] = TypeAdapter(AnyProvider)


class RuleMatch(_Strict):
    """Every field given must match (AND); an empty match matches everything."""

    model: str | None = Field(default=None, description="glob on the requested model, e.g. 'gpt-4*'")
    headers: dict[str, str] = Field(default_factory=dict, description="header name -> glob on its value")
    key_ids: list[str] | None = Field(default=None, description="gateway API key ids")
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    stream: bool | None = None
    prompt_class: list[PromptClass] | None = None


class RuleReject(_Strict):
    status: int = Field(default=403, ge=400, le=599)
    message: str = "rejected by a routing rule"


class RuleAction(_Strict):
    providers: list[str] | None = Field(default=None, description="only these providers, in this order of preference")
    group: str | None = Field(default=None, description="only the providers of this routing group")
    model: str | None = Field(default=None, description="rewrite the requested model")
    strategy: Strategy | None = None
    reject: RuleReject | None = None


class Rule(_Strict):
    name: str = Field(min_length=1)
    match: RuleMatch = Field(default_factory=RuleMatch)
    action: RuleAction


class RetryConfig(_Strict):
    """Retries on the same provider for 5xx, timeouts and connection errors, before failing over."""

    attempts: int = Field(default=1, ge=0, le=10, description="extra tries on the same provider")
    base_delay_s: float = Field(default=0.2, ge=0)
    max_delay_s: float = Field(default=2.0, ge=0)


class BreakerConfig(_Strict):
    failures: int = Field(default=5, ge=1, description="failures within window_s that open the breaker")
    window_s: float = Field(default=60, gt=0)
    open_s: float = Field(default=30, gt=0, description="how long it stays open before one probe is let through")


class SmartRoutingConfig(_Strict):
    enabled: bool = False
    classifier_model: str | None = Field(default=None, description="model asked through the gateway itself; "
                                         "unset: heuristics only")
    classifier_timeout_s: float = Field(default=2.0, gt=0)
    cache_size: int = Field(default=1024, ge=0)


class FallbacksConfig(_Strict):
    """Other models to serve a request that a model refused for what it is, not for an error of the moment:
    logical model name (or alias) -> fallback models (logical names or aliases), tried in order."""

    context_window: dict[str, list[str]] = Field(default_factory=dict, description="when the prompt plus "
                                                 "max_tokens exceeds the model's context_window, or its upstream "
                                                 "answers with a context-length error")
    content_filter: dict[str, list[str]] = Field(default_factory=dict, description="when the upstream refuses "
                                                 "on content policy (a content-filter error, or a finish reason "
                                                 "of content_filter before anything was streamed)")

    def for_model(self, why: str, model: str, requested: str | None = None) -> list[str]:
        """The fallback models for ``model`` (its logical name, or as the client asked for it)."""
        table: dict[str, list[str]] = getattr(self, why)
        return table.get(model) or (table.get(requested, []) if requested else [])


def _cache_lifetimes() -> dict[ProviderType, float]:
    """Anthropic's cache lives 5 minutes after its last use; OpenAI keeps a prefix 5 to 10 minutes; Gemini's
    implicit cache a few minutes (not documented exactly)."""
    return {"anthropic": 300.0, "openai": 300.0, "gemini": 300.0}


class CacheAffinityConfig(_Strict):
    """Prompt-cache-aware routing (docs/routing.md, "Prompt-cache affinity")."""

    enabled: bool = True
    ttl_s: dict[ProviderType, Annotated[float, Field(gt=0)]] = Field(
        default_factory=_cache_lifetimes,
        description="provider type -> how long its prompt cache lives after the last use (a type not listed "
                    "caches nothing); each successful answer starts it again")
    min_prefix_tokens: int = Field(default=1024, ge=0, description="shorter prefixes are not cached by the "
                                   "providers (1024 tokens for Anthropic, OpenAI and Gemini's implicit cache): "
                                   "such requests skip affinity")

    def ttl_for(self, provider_type: str) -> float:
        """How long a provider of this type keeps a prefix cached; 0: it caches nothing (or affinity is off)."""
        return self.ttl_s.get(provider_type, 0.0) if self.enabled else 0.0  # type: ignore[call-overload]


class RoutingConfig(_Strict):
    aliases: dict[str, str] = Field(default_factory=dict, description="alias -> logical model name")
    strategy: Strategy = "priority"
    groups: dict[str, list[str]] = Field(default_factory=dict, description="group name -> provider ids")
    rules: list[Rule] = Field(default_factory=list, description="first match wins")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    cooldown_s: float = Field(default=30, gt=0, description="after a 429 that gives no reset time")
    default_max_tokens: int = Field(default=512, gt=0, description="answer size reserved when max_tokens is unset")
    smart: SmartRoutingConfig = Field(default_factory=SmartRoutingConfig)
    fallbacks: FallbacksConfig = Field(default_factory=FallbacksConfig)
    cache_affinity: CacheAffinityConfig = Field(default_factory=CacheAffinityConfig)
    decide_timeout_s: float = Field(default=2.0, gt=0, description="how long the edge waits for the router")
    plan_max_age_s: float = Field(default=5.0, ge=0, description="how long an edge reuses a plan for a route "
                                  "without limits before asking again (changes are announced at once; 0: "
                                  "ask for every request)")
    total_timeout_s: float = Field(default=300.0, gt=0, description="per request, all attempts together")
    leases: bool = Field(default=True, description="routes with limits: edges admit requests from capacity "
                         "leases the router grants (docs/routing.md, 'Leases for routes with limits'; a full "
                         "limit still reads as per request: its reason, 429, Retry-After, failover); off: the "
                         "router admits each request")
    lease_ttl_s: float = Field(default=2.0, gt=0, le=60, description="longest life of a capacity lease (it also "
                               "ends with the shortest window bucket it draws on)")
    abandoned_after_s: float | None = Field(default=None, gt=0, description="an admitted request whose edge has "
                                            "not settled it (nor renewed a running stream) this long after "
                                            "admission is recorded as abandoned, at its reserved estimate; "
                                            "unset: total_timeout_s + 60")

    @property
    def lease_s(self) -> float:
        return self.abandoned_after_s if self.abandoned_after_s is not None else self.total_timeout_s + 60.0


class UsageConfig(_Strict):
    stream_max_age_days: float = Field(default=90, gt=0)
    stream_max_bytes: int = Field(default=5 * 1024**3, gt=0)
    batch_size: int = Field(default=5000, gt=0, le=100_000)  # bigger batches: far fewer ClickHouse parts
    batch_wait_s: float = Field(default=0.5, gt=0)


class EdgeConfig(_Strict):
    """What the edge accepts from clients (bigger bodies get 413, deeper JSON 400, in the caller's format)."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024**3,
                                description="request body size limit (images travel inline: keep room)")
    max_json_depth: int = Field(default=100, ge=8, le=1000, description="nesting of objects and arrays")
    require_keys: bool = Field(default=False, description="refuse clients without a gateway key even while no "
                               "key exists (keys are required anyway as soon as one does)")


class KeysConfig(_Strict):
    """Gateway API keys (created with ``llmgw keys`` or the admin API, kept in NATS, not in this file)."""

    budget_timezone: str = Field(default="UTC", description="keys' monthly limits reset at the start of each "
                                 "calendar month in this IANA time zone")

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as UTC or Europe/Paris)") from None
        return v


class DemoConfig(_Strict):
    """The local demo provider that ``llmgw run`` starts (a real HTTP process)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=18090, gt=0, lt=65536)


LITELLM_PRICES_URL = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"


class PricingConfig(_Strict):
    """Where prices come from: the public source (LiteLLM's JSON format) fetched at start-up in the
    background, its copy cached under the state dir, the snapshot bundled with the pricing service;
    ``overrides`` win over all three (and a provider model's own ``price`` wins over everything)."""

    source_url: str | None = Field(default=LITELLM_PRICES_URL, description="public price list; null: never fetch")
    fetch_on_start: bool = True
    fetch_timeout_s: float = Field(default=10.0, gt=0, le=300, description="the whole fetch, connect to last byte")
    refresh_interval_s: float | None = Field(default=None, ge=60, description="fetch again this often; null: start-up only")
    overrides: dict[str, Price] = Field(default_factory=dict, description="'provider/model' or 'model' (upstream "
                                        "name) -> price")

    @field_validator("source_url")
    @classmethod
    def _source_url_shape(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http:// or https:// URL (or null to never fetch)")
        return v

    @field_validator("overrides")
    @classmethod
    def _override_keys(cls, v: dict[str, Price]) -> dict[str, Price]:
        for key in v:
            if not key.strip() or key != key.strip():
                raise ValueError(f"override key {key!r} must be a model name without surrounding spaces")
        return v


class GatewayConfig(_Strict):
    version: Literal[1] = 1
    providers: list[AnyProvider] = Field(default_factory=list)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        problems = reference_problems(self.model_dump(include={"providers", "routing"}))
        if problems:
            raise _ReferenceErrors(problems)
        return self

    def provider(self, provider_id: str) -> ProviderConfig | None:
        for p in self.providers:
            if p.id == provider_id:
                return p
        return None


class ConfigError(Exception):
    """Invalid config. ``problems`` is a list of (field path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


class _ReferenceErrors(ValueError):
    """Several cross-reference problems at once (``config_errors.describe`` spreads them out)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def reference_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Names that must point at something: provider ids unique, alias targets served, group members and
    rule targets known. Reads plain data (a raw file too: a file with other errors gets these in the
    same pass), skipping what is not even the right shape (the field checks report that)."""
    providers = [p if isinstance(p, dict) else {} for p in _items(data.get("providers"))]
    ids = [p["id"] for p in providers if isinstance(p.get("id"), str)]
    problems: list[tuple[str, str]] = []
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(("providers", f"provider ids must be unique, repeated: {', '.join(dupes)}"))
    served = {m["name"] for p in providers for m in _items(p.get("models"))
              if isinstance(m, dict) and isinstance(m.get("name"), str)}
    routing = _mapping(data.get("routing"))
    for alias, target in _mapping(routing.get("aliases")).items():
        if isinstance(target, str) and target not in served:
            problems.append((f"routing.aliases.{alias}", f"target model {target!r} is not served by any provider"
                             + suggestion(target, served)))
    known = set(ids)
    groups = _mapping(routing.get("groups"))
    for group, members in groups.items():
        for i, member in enumerate(_items(members)):
            if isinstance(member, str) and member not in known:
                problems.append((f"routing.groups.{group}[{i}]",
                                 f"unknown provider {member!r}{suggestion(member, known)}"))
    aliases = _mapping(routing.get("aliases"))
    for why, table in _mapping(routing.get("fallbacks")).items():
        for model, targets in _mapping(table).items():
            where = f"routing.fallbacks.{why}.{model}"
            if model not in served and model not in aliases:
                problems.append((where, f"model {model!r} is not served by any provider{suggestion(model, served)}"))
            for j, target in enumerate(_items(targets)):
                if isinstance(target, str) and target not in served and target not in aliases:
                    problems.append((f"{where}[{j}]", f"fallback model {target!r} is not served by any provider"
                                     + suggestion(target, served)))
                elif target == model:
                    problems.append((f"{where}[{j}]", "a model cannot be its own fallback"))
    for i, rule in enumerate(_items(routing.get("rules"))):
        action = _mapping(_mapping(rule).get("action"))
        where = f"routing.rules[{i}].action"
        if sum(action.get(x) is not None for x in ("providers", "group", "reject")) > 1:
            problems.append((where, "use one of providers, group or reject"))
        named = action.get("group")
        if isinstance(named, str) and named not in groups:
            problems.append((f"{where}.group", f"unknown group {named!r}{suggestion(named, groups)}"))
        for j, member in enumerate(_items(action.get("providers"))):
            if isinstance(member, str) and member not in known:
                problems.append((f"{where}.providers[{j}]", f"unknown provider {member!r}{suggestion(member, known)}"))
    return problems


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """The validated config, or a ``ConfigError`` with every problem found (field checks and cross
    references together)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "the top level must be a mapping")])
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = describe(exc.errors(), data, GatewayConfig)
    # the cross checks did not run (they need valid fields): run them on the raw data
    problems += [p for p in reference_problems(data) if p not in problems]
    raise ConfigError(source, problems)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A mapping that names a key twice is an error: plain YAML keeps the last one silently, so a second
    ``routing:`` block would drop the first without a word (``<<`` merges may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, source: str = "<config>") -> GatewayConfig:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return parse_config(data, source)


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [("", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_config_text(text, str(p))


def load_config_or_default(path: str | os.PathLike[str]) -> GatewayConfig:
    """The config file, or the defaults when there is none yet (a broken file is still an error)."""
    return load_config(path) if Path(path).exists() else GatewayConfig()


def resolve_secret(value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """Literal secrets pass through; ``${NAME}`` is read from the environment."""
    if value is None:
        return None
    m = _ENV_REF.match(value)
    if not m:
        return value
    env = os.environ if env is None else env
    return env.get(m.group(1)) or None


def masked(config: GatewayConfig) -> dict[str, Any]:
    """JSON-ready copy with literal secrets replaced; ``${NAME}`` references are kept (not secret)."""
    data = config.model_dump(mode="json")
    for p in data["providers"]:
        key = p.get("api_key")
        if key and not _ENV_REF.match(key):
            p["api_key"] = SECRET_MASK
        if "headers" in p:  # HTTP types only
            p["headers"] = {k: SECRET_MASK for k in p["headers"]}
    pricing = data.get("pricing") or {}
    if pricing.get("source_url"):
        pricing["source_url"] = mask_url(pricing["source_url"])
    return data


def mask_url(url: str) -> str:
    """A URL with any credentials (user:password@, query string) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = SECRET_MASK + "@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, SECRET_MASK if parts.query else "", ""))
