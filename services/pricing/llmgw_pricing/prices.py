"""Domain logic: which price applies to (provider, upstream model), and where it came from.

Order, first hit wins:

1. the provider model's own ``price`` in the gateway config (source ``config``);
2. ``pricing.overrides`` in the config, by ``provider/model`` then ``model``
   (upstream name, then the logical name) (source ``config``);
3. the fetched table: fetched now (``remote``) or the cached earlier fetch (``cache``);
4. the snapshot bundled with the service (``bundled``);
5. otherwise ``unknown`` (no price).

In a table, a model is looked up under several names: ``<provider id>/<model>``,
``<vendor>/<model>`` (the vendor known from the provider's type or API host,
e.g. ``groq`` for api.groq.com), the model name itself, and its shorter
``a/b`` suffixes (``openai/gpt-4o`` -> ``gpt-4o``); exact spelling first, then
case-insensitive, then a unique ``vendor/<name>`` entry of the table (a name
several vendors price differently stays unknown rather than guessed).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Iterable, Literal, Sequence
from urllib.parse import urlsplit

from llmgw_common.config import SUBSCRIPTION_TYPES, GatewayConfig, Price, ProviderConfig
from llmgw_common.messages import PriceInfo, PriceKey

from .sources import document_capabilities, parse_document

TableKind = Literal["remote", "cache", "bundled"]
BUNDLED_PATH = Path(__file__).parent / "data" / "prices.json"

# API host -> the vendor prefix LiteLLM uses for that provider's models
HOST_VENDORS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
    "openrouter.ai": "openrouter",
    "api.mistral.ai": "mistral",
    "generativelanguage.googleapis.com": "gemini",
    "api.deepseek.com": "deepseek",
    "api.together.xyz": "together_ai",
    "api.fireworks.ai": "fireworks_ai",
    "api.x.ai": "xai",
    "api.cerebras.ai": "cerebras",
    "api.deepinfra.com": "deepinfra",
    "api.perplexity.ai": "perplexity",
    "api.githubcopilot.com": "github_copilot",
}

_AMBIGUOUS = object()


def _price_identity(price: Price) -> str:
    return json.dumps(price.model_dump(mode="json"), sort_keys=True)


class PriceTable:
    """Prices by key from one source, with the indexes lookups need."""

    def __init__(self, prices: dict[str, Price], kind: TableKind, as_of: datetime | None = None,
                 origin: str = "", capabilities: dict[str, dict[str, bool]] | None = None):
        self.prices = prices
        # what each model can serve, where the table says (the bundled snapshot; keys are price keys)
        self.capabilities = capabilities or {}
        self.kind: TableKind = kind
        self.as_of = as_of
        self.origin = origin
        self._lower: dict[str, str] = {}
        bare: dict[str, object] = {}
        for key, price in prices.items():
            self._lower.setdefault(key.lower(), key)
            parts = key.split("/")
            for i in range(1, len(parts)):
                suffix = "/".join(parts[i:]).lower()
                seen = bare.get(suffix)
                if seen is None:
                    bare[suffix] = key
                elif seen is not _AMBIGUOUS and _price_identity(prices[seen]) != _price_identity(price):
                    bare[suffix] = _AMBIGUOUS
        self._bare = {k: v for k, v in bare.items() if v is not _AMBIGUOUS}

    @property
    def snapshot_date(self) -> str:  # kept for callers of the first version
        return self.as_of.date().isoformat() if self.as_of else ""

    @classmethod
    def bundled(cls, path: Path = BUNDLED_PATH) -> PriceTable:
        doc = json.loads(path.read_text(encoding="utf-8"))
        prices, as_of, origin = parse_document(doc, str(path))
        return cls(prices, "bundled", as_of, describe_origin(origin), document_capabilities(doc, str(path)))

    def find(self, names: Sequence[str]) -> tuple[str, Price] | None:
        for name in names:
            if name in self.prices:
                return name, self.prices[name]
        for name in names:
            key = self._lower.get(name.lower())
            if key is not None:
                return key, self.prices[key]
        for name in names:
            key = self._bare.get(name.lower())
            if isinstance(key, str):
                return key, self.prices[key]
        return None


def describe_origin(origin: dict) -> str:
    """One line for people: 'litellm 1.2.3 (litellm/model_prices...json)' or the URL."""
    if not origin:
        return ""
    if origin.get("package"):
        text = f"{origin['package']} {origin.get('version', '')}".strip()
        if origin.get("file"):
            text += f" ({origin['file']})"
        return text
    return str(origin.get("url") or origin.get("file") or origin.get("source") or "")


def vendor_hints(provider: ProviderConfig | None) -> list[str]:
    if provider is None:
        return []
    hints: list[str] = []
    kind = getattr(provider, "type", "openai")
    if kind and kind != "openai":  # "openai" is the generic OpenAI-compatible adapter: says nothing
        hints.append(str(kind))
    host = (urlsplit(getattr(provider, "base_url", None) or "").hostname or "").lower()  # CLI types have none
    if host in HOST_VENDORS:
        hints.append(HOST_VENDORS[host])
    return hints


def lookup_names(provider_id: str, model: str, provider: ProviderConfig | None = None) -> list[str]:
    """Table keys to try for a model served by a provider, most specific first."""
    names: list[str] = []
    for prefix in [provider_id, *vendor_hints(provider)]:
        names.append(f"{prefix}/{model}")
    names.append(model)
    parts = model.split("/")
    for i in range(1, len(parts)):
        names.append("/".join(parts[i:]))
    seen: set[str] = set()
    return [n for n in names if n and not (n in seen or seen.add(n))]


def _as_tables(tables: PriceTable | Iterable[PriceTable | None]) -> list[PriceTable]:
    if isinstance(tables, PriceTable):
        return [tables]
    return [t for t in tables if t is not None]


def effective_price(config: GatewayConfig, tables: PriceTable | Iterable[PriceTable | None],
                    key: PriceKey) -> PriceInfo:
    """The price that applies, with the capabilities the tables know of the model (whatever priced it)."""
    tables = _as_tables(tables)
    info = _effective_price(config, tables, key)
    names = lookup_names(key.provider, key.model, config.provider(key.provider))
    for table in tables:
        found = table.find(names) if table.capabilities else None
        if found is not None and found[0] in table.capabilities:
            info.capabilities = dict(table.capabilities[found[0]])
            break
    return info


def _effective_price(config: GatewayConfig, tables: list[PriceTable], key: PriceKey) -> PriceInfo:
    provider = config.provider(key.provider)
    logical: list[str] = []
    if provider is not None:
        p_index = config.providers.index(provider)
        for m_index, m in enumerate(provider.models):
            if m.upstream_name != key.model:
                continue
            if m.price is not None:
                return PriceInfo(provider=key.provider, model=key.model, price=m.price, source="config",
                                 matched=f"providers[{p_index}].models[{m_index}].price")
            logical.append(m.name)
    overrides = config.pricing.overrides
    if overrides:
        names = [f"{key.provider}/{key.model}", *(f"{key.provider}/{n}" for n in logical),
                 key.model, *logical]
        for name in names:
            if name in overrides:
                return PriceInfo(provider=key.provider, model=key.model, price=overrides[name], source="config",
                                 matched=f"pricing.overrides.{name}")
    if provider is not None and provider.type in SUBSCRIPTION_TYPES:
        # the public list prices the model's API use; through a subscription the margin is zero
        return PriceInfo(provider=key.provider, model=key.model, price=Price(), source="config",
                         matched=f"providers[{config.providers.index(provider)}].type: {provider.type} "
                                 "(a subscription: no marginal cost)")
    names = lookup_names(key.provider, key.model, provider)
    for table in tables:
        found = table.find(names)
        if found is not None:
            return PriceInfo(provider=key.provider, model=key.model, price=found[1], source=table.kind,
                             matched=found[0], as_of=table.as_of)
    return PriceInfo(provider=key.provider, model=key.model, price=None, source="unknown")


def configured_keys(config: GatewayConfig) -> list[PriceKey]:
    keys: list[PriceKey] = []
    seen: set[tuple[str, str]] = set()
    for p in config.providers:
        for m in p.models:
            pair = (p.id, m.upstream_name)
            if pair not in seen:
                seen.add(pair)
                keys.append(PriceKey(provider=p.id, model=m.upstream_name))
    return keys


def all_prices(config: GatewayConfig, tables: PriceTable | Iterable[PriceTable | None]) -> list[PriceInfo]:
    """The effective price of every model every configured provider serves (each pair once)."""
    tables = _as_tables(tables)
    return [effective_price(config, tables, k) for k in configured_keys(config)]


def fingerprint(prices: Iterable[PriceInfo]) -> dict[tuple[str, str], str]:
    """What an announcement compares: price and source per (provider, model)."""
    return {(p.provider, p.model): json.dumps([p.source, None if p.price is None else p.price.model_dump(mode="json")],
                                              sort_keys=True) for p in prices}


def changed_keys(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]) -> list[PriceKey]:
    pairs = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [PriceKey(provider=p, model=m) for p, m in pairs]
