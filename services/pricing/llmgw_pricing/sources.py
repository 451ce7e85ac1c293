"""Price data sources: LiteLLM's public price JSON (fetched or from a wheel), the on-disk
cache of the last fetch, and the document format the bundled snapshot and the cache share.

A price document is JSON::

    {"origin": {...}, "as_of": "2025-06-01T00:00:00+00:00", "prices": {"<key>": {Price fields}}}

Keys are LiteLLM's: an upstream model name for the big vendors (``gpt-4o``,
``claude-sonnet-4-5``) and ``<litellm provider>/<model>`` for the rest
(``groq/openai/gpt-oss-120b``, ``mistral/mistral-large-latest``).
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from llmgw_common.config import Price
from llmgw_common.files import write_atomically
from llmgw_common.lean_imports import absent

with absent("click", "pygments", "rich"):  # httpx's command line client, never used: ~5 MB
    import httpx

KEEP_MODES = ("chat", "embedding")
MAX_FETCH_BYTES = 64 * 1024 * 1024
CACHE_FILE = "prices-cache.json"


class PriceSourceError(Exception):
    """The source could not be read or holds no usable prices (message safe to log)."""


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: what may be logged and shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---- LiteLLM format ---------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _per_mtok(per_token: float) -> Decimal:
    # str() of a float is its shortest round-trip form: 2.5e-06 -> Decimal('0.0000025') exactly
    d = (Decimal(str(per_token)) * 1_000_000).normalize()
    return Decimal(format(d, "f"))


def parse_litellm(data: Any) -> dict[str, Price]:
    """LiteLLM's ``model_prices_and_context_window.json`` -> prices per key.

    Kept: chat and embedding models with a per-token input price (and an output
    price, except embeddings where it defaults to 0). Carried when given: cache reads
    (``cache_read_input_token_cost``, or ``input_cost_per_token_cache_hit``), cache writes
    (``cache_creation_input_token_cost``: the 5-minute cache; the 1-hour rate
    ``cache_creation_input_token_cost_above_1hr`` is not kept), reasoning tokens
    (``output_cost_per_reasoning_token``) and a per-request charge (``input_cost_per_request``).
    """
    if not isinstance(data, dict):
        raise PriceSourceError("not a LiteLLM price list: the top level is not a JSON object")
    prices: dict[str, Price] = {}
    for key, spec in data.items():
        if key == "sample_spec" or not isinstance(key, str) or not key.strip() or not isinstance(spec, dict):
            continue
        mode = spec.get("mode")
        if mode not in KEEP_MODES:
            continue
        tin = _number(spec.get("input_cost_per_token"))
        tout = _number(spec.get("output_cost_per_token"))
        if tout is None and mode == "embedding" and spec.get("output_cost_per_token") is None:
            tout = 0.0
        if tin is None or tout is None:
            continue
        fields: dict[str, Decimal] = {"input_per_mtok": _per_mtok(tin), "output_per_mtok": _per_mtok(tout)}
        cached = _number(spec.get("cache_read_input_token_cost"))
        if cached is None:
            cached = _number(spec.get("input_cost_per_token_cache_hit"))
        if cached is not None:
            fields["cached_input_per_mtok"] = _per_mtok(cached)
        cache_write = _number(spec.get("cache_creation_input_token_cost"))
        if cache_write is not None:
            fields["cache_write_per_mtok"] = _per_mtok(cache_write)
        reasoning = _number(spec.get("output_cost_per_reasoning_token"))
        if reasoning is not None:
            fields["reasoning_per_mtok"] = _per_mtok(reasoning)
        per_request = _number(spec.get("input_cost_per_request"))
        if per_request is not None:
            fields["per_request"] = Decimal(str(per_request))
        prices[key] = Price(**fields)
    if not prices:
        raise PriceSourceError("no chat or embedding model with per-token prices in the price list")
    return prices


# LiteLLM's flag -> the gateway's capability (llmgw_common.config.Capabilities)
LITELLM_CAPABILITIES = {"supports_function_calling": "tools", "supports_vision": "vision",
                        "supports_response_schema": "json_schema", "supports_reasoning": "reasoning"}
CAPABILITY_NAMES = frozenset({*LITELLM_CAPABILITIES.values(), "embeddings"})


def parse_litellm_capabilities(data: Any, keys: Iterable[str]) -> dict[str, dict[str, bool]]:
    """What LiteLLM's list says each of ``keys`` (the models ``parse_litellm`` kept) can serve: only the
    flags it states (true or false; a flag it leaves out stays unknown, which routing takes as available),
    and ``embeddings`` from the model's mode."""
    out: dict[str, dict[str, bool]] = {}
    for key in keys:
        spec = data.get(key) if isinstance(data, dict) else None
        if not isinstance(spec, dict):
            continue
        caps = {name: spec[flag] for flag, name in LITELLM_CAPABILITIES.items() if isinstance(spec.get(flag), bool)}
        caps["embeddings"] = spec.get("mode") == "embedding"
        out[key] = caps
    return out


def document_capabilities(doc: Any, where: str) -> dict[str, dict[str, bool]]:
    """A price document's optional ``capabilities`` (the bundled snapshot has them; a cached fetch not)."""
    raw = doc.get("capabilities") if isinstance(doc, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PriceSourceError(f"{where}: capabilities: not an object")
    out: dict[str, dict[str, bool]] = {}
    for key, caps in raw.items():
        if not isinstance(caps, dict) or any(n not in CAPABILITY_NAMES or not isinstance(v, bool)
                                             for n, v in caps.items()):
            raise PriceSourceError(f"{where}: capabilities.{key}: an object of {', '.join(sorted(CAPABILITY_NAMES))}"
                                   " -> true or false")
        out[key] = caps
    return out


# ---- price documents (bundled snapshot, cache) -------------------------------

def price_to_json(price: Price) -> dict[str, str]:
    """Compact form: only the fields that differ from their defaults, decimals as strings."""
    out: dict[str, str] = {}
    for name, value in price.model_dump(exclude_defaults=True).items():
        if value is not None:
            out[name] = format(value, "f")
    return out


def make_document(prices: Mapping[str, Price], origin: Mapping[str, Any], as_of: datetime,
                  about: str | None = None,
                  capabilities: Mapping[str, Mapping[str, bool]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if about:
        doc["_about"] = about
    doc["origin"] = dict(origin)
    doc["as_of"] = as_of.astimezone(timezone.utc).isoformat()
    doc["count"] = len(prices)
    doc["prices"] = {k: price_to_json(prices[k]) for k in sorted(prices)}
    if capabilities:
        doc["capabilities"] = {k: dict(sorted(capabilities[k].items())) for k in sorted(capabilities)}
    return doc


def dump_document(doc: Mapping[str, Any]) -> str:
    """One price (and one model's capabilities) per line: readable diffs when the snapshot is regenerated."""
    tables = [name for name in ("prices", "capabilities") if name in doc]
    head = {k: v for k, v in doc.items() if k not in tables}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    for t, name in enumerate(tables):
        lines.append(f"  {json.dumps(name)}: {{")
        items = list(doc[name].items())
        for i, (k, v) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            lines.append(f"    {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}{comma}")
        lines.append("  }," if t < len(tables) - 1 else "  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse_document(doc: Any, where: str) -> tuple[dict[str, Price], datetime | None, dict[str, Any]]:
    """(prices, as_of, origin) from a price document; ``where`` names it in errors."""
    if not isinstance(doc, dict) or not isinstance(doc.get("prices"), dict):
        raise PriceSourceError(f"{where}: not a price document (no 'prices' object)")
    prices: dict[str, Price] = {}
    for key, raw in doc["prices"].items():
        try:
            prices[key] = Price.model_validate(raw)
        except ValueError as exc:
            raise PriceSourceError(f"{where}: prices.{key}: {str(exc).splitlines()[-1].strip()}") from None
    as_of = None
    raw_as_of = doc.get("as_of") or doc.get("snapshot_date")
    if isinstance(raw_as_of, str):
        try:
            as_of = datetime.fromisoformat(raw_as_of)
        except ValueError:
            raise PriceSourceError(f"{where}: as_of: not an ISO date: {raw_as_of!r}") from None
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
    origin = doc.get("origin") if isinstance(doc.get("origin"), dict) else {}
    return prices, as_of, origin


def write_cache(path: Path, prices: Mapping[str, Price], url: str, fetched_at: datetime) -> None:
    doc = make_document(prices, {"source": "remote", "url": safe_url(url)}, fetched_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(doc, separators=(",", ":")), mode=0o644)  # the file holds no secret


def read_cache(path: Path) -> tuple[dict[str, Price], datetime | None, dict[str, Any]] | None:
    """The cached fetch, or None when there is none; a damaged cache raises PriceSourceError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PriceSourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PriceSourceError(f"{path}: not JSON: {exc}") from None
    return parse_document(doc, str(path))


# ---- fetching ---------------------------------------------------------------

async def fetch_prices(url: str, timeout_s: float, max_bytes: int = MAX_FETCH_BYTES) -> dict[str, Price]:
    """GET the LiteLLM price JSON; the whole fetch is bounded by ``timeout_s``.

    Every failure (offline, DNS, refused, timeout, HTTP error, too big, not the
    expected format) becomes a PriceSourceError whose message names no secret.
    """
    shown = safe_url(url)
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True,
                                         headers={"User-Agent": "llmgw-pricing", "Accept": "application/json"}) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise PriceSourceError(f"{shown}: HTTP {resp.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise PriceSourceError(f"{shown}: larger than {max_bytes} bytes")
                        chunks.append(chunk)
    except PriceSourceError:
        raise
    except TimeoutError:
        raise PriceSourceError(f"{shown}: no complete answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        detail = str(exc).replace(url, shown) or type(exc).__name__
        raise PriceSourceError(f"{shown}: {type(exc).__name__}: {detail}") from None
    body = b"".join(chunks)

    def _parse() -> dict[str, Price]:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise PriceSourceError(f"{shown}: not JSON: {exc}") from None
        return parse_litellm(data)

    return await asyncio.to_thread(_parse)
