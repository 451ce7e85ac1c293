"""``POST /api/compare``: one prompt to several ``provider/model`` targets side by side.

Each target is asked in parallel THROUGH THE EDGE (``POST <edge>/v1/chat/completions`` with model
``provider/model``), so the request is routed, limited, counted and billed like any other; the edge is
``LLMGW_EDGE_URL``, else ``http://<LLMGW_EDGE_HOST, loopback when it binds every address>:<LLMGW_EDGE_PORT>``
(the runner passes both to every service). ``api_key`` is sent as ``Authorization: Bearer`` (a gateway
key: needed once gateway keys are enforced; a 401 says so).

Cost: the edge's usage event is not waited for (the request log lags the answer). Each result's
``cost_usd`` is the provider's own figure when the answer carries one (``usage.cost``), else the
effective price the pricing service gives for the provider and upstream model (``llmgw.pricing.lookup``)
times the answer's tokens (cached and reasoning parts at their own rates: ``Price.cost``, what the edge
computes too); ``null`` with a ``cost_note`` when no price is known or pricing does not answer.

Admin only: it spends money (the read-only role is refused by the auth middleware like any POST, and
here again).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.admin_auth import ADMIN
from llmgw_common.lean_imports import absent
from llmgw_common.messages import PriceKey, PriceList, PriceLookup
from llmgw_common.nats_conn import request as nats_request

with absent("click", "pygments", "rich"):  # httpx's command line client, never used: ~5 MB
    import httpx

router = APIRouter()

MAX_PROMPT_BYTES = 32 * 1024
MAX_TARGETS = 6
TIMEOUT_S = 180.0  # one target, whole answer
TEXT_CHARS = 64 * 1024  # of each answer, at most
Target = Annotated[str, Field(min_length=3, max_length=256, pattern=r"^[^/\s]+/\S+$",
                              description="provider/model")]


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    edge_url: str = Field(default="", alias="LLMGW_EDGE_URL")
    edge_host: str = Field(default="127.0.0.1", alias="LLMGW_EDGE_HOST")
    edge_port: int = Field(default=8080, alias="LLMGW_EDGE_PORT")

    @property
    def base_url(self) -> str:
        if self.edge_url:
            return self.edge_url.rstrip("/")
        host = self.edge_host if self.edge_host not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.edge_port}"


class CompareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_BYTES, description="at most 32 kB (UTF-8)")
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS)
    max_tokens: int = Field(default=512, gt=0, le=4096)
    api_key: SecretStr | None = Field(default=None, max_length=512, description="a gateway API key, sent to the "
                                      "edge as Authorization: Bearer (needed when keys are enforced)")

    @field_validator("prompt")
    @classmethod
    def _prompt_bytes(cls, v: str) -> str:
        if len(v.encode("utf-8", errors="surrogatepass")) > MAX_PROMPT_BYTES:
            raise ValueError(f"at most {MAX_PROMPT_BYTES} bytes (UTF-8)")
        return v

    @field_validator("api_key")
    @classmethod
    def _header_safe(cls, v: SecretStr | None) -> SecretStr | None:
        # it goes into an HTTP header, which carries visible ASCII only (gateway keys are ASCII); the error
        # never echoes the value: it is a secret
        if v is not None and not all("!" <= ch <= "~" for ch in v.get_secret_value()):
            raise ValueError("a gateway API key is visible ASCII only (no spaces, line breaks or accents)")
        return v

    @field_validator("targets")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each target once")
        return v


class CompareResult(BaseModel):
    target: str
    status: int = Field(description="the edge's HTTP status (0: the edge did not answer)")
    text: str | None = None
    latency_ms: float
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: str | None = Field(default=None, description="USD as text; null: unknown (see cost_note)")
    error: str | None = None
    provider: str | None = Field(default=None, description="who served it (x-llmgw-provider)")
    upstream_model: str | None = Field(default=None, description="x-llmgw-model")
    request_id: str | None = Field(default=None, description="x-request-id: the request log has it")
    cost_note: str | None = None


class CompareReply(BaseModel):
    results: list[CompareResult]


def _edge_error(status: int, body: Any, target: str) -> str:
    message = None
    if isinstance(body, dict):
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
    message = str(message or f"HTTP {status}")[:1000]
    if status == 401:
        return (f"the gateway wants a gateway API key: put one in api_key (llmgw keys create, or POST /api/keys) "
                f"— the edge said: {message}")
    if status == 404:
        return f"{message} (is {target} a provider/model of the config?)"
    return message


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


async def _ask_one(client: httpx.AsyncClient, target: str, body: CompareBody) -> tuple[CompareResult, dict]:
    payload = {"model": target, "messages": [{"role": "user", "content": body.prompt}],
               "max_tokens": body.max_tokens, "stream": False}
    headers = {"x-llmgw-source": "compare"}
    if body.api_key is not None:
        headers["authorization"] = f"Bearer {body.api_key.get_secret_value()}"
    t0 = time.perf_counter()
    try:
        resp = await client.post("/v1/chat/completions", json=payload, headers=headers)
    except httpx.TimeoutException:
        return CompareResult(target=target, status=0, latency_ms=round((time.perf_counter() - t0) * 1000, 1),
                             error=f"no answer from the edge within {TIMEOUT_S:.0f} s"), {}
    except httpx.HTTPError as exc:
        return CompareResult(target=target, status=0, latency_ms=round((time.perf_counter() - t0) * 1000, 1),
                             error=f"the edge at {client.base_url} is not reachable ({type(exc).__name__})"), {}
    latency = round((time.perf_counter() - t0) * 1000, 1)
    try:
        data = resp.json()
    except ValueError:
        data = None
    result = CompareResult(target=target, status=resp.status_code, latency_ms=latency,
                           provider=resp.headers.get("x-llmgw-provider"),
                           upstream_model=resp.headers.get("x-llmgw-model"),
                           request_id=resp.headers.get("x-request-id"))
    if resp.status_code != 200 or not isinstance(data, dict):
        result.error = _edge_error(resp.status_code, data, target) if resp.status_code != 200 else \
            "the edge's answer is no chat completion"
        return result, {}
    choices = data.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    result.text = ("" if content is None else content if isinstance(content, str) else str(content))[:TEXT_CHARS]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    result.tokens_in = _int(usage.get("prompt_tokens"))
    result.tokens_out = _int(usage.get("completion_tokens"))
    return result, usage


async def _price(request: Request, results: list[tuple[CompareResult, dict]]) -> None:
    """cost_usd of every answered target: the provider's figure, else price x tokens."""
    wanted = []
    for result, usage in results:
        if result.status != 200:
            continue
        reported = usage.get("cost")
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported >= 0:
            result.cost_usd, result.cost_note = str(Decimal(str(reported))), "reported by the provider"
        elif result.provider and result.upstream_model:
            wanted.append((result, usage))
        else:
            result.cost_note = "the edge did not say who served it"
    if not wanted:
        return
    keys = list({(r.provider, r.upstream_model) for r, _ in wanted})
    try:
        reply = await nats_request(request.app.state.nc, subjects.PRICING_LOOKUP,
                                   PriceLookup(keys=[PriceKey(provider=p, model=m) for p, m in keys]), PriceList,
                                   request.app.state.settings.query_timeout_s)
        prices = {(i.provider, i.model): i for i in reply.prices}
    except Exception as exc:  # noqa: BLE001 - the answers stand; their cost is unknown
        for result, _ in wanted:
            result.cost_note = f"the pricing service did not answer ({type(exc).__name__})"
        return
    for result, usage in wanted:
        info = prices.get((result.provider, result.upstream_model))
        if info is None or info.price is None:
            result.cost_note = "no known price for this model"
            continue
        details_in = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        details_out = (usage.get("completion_tokens_details")
                       if isinstance(usage.get("completion_tokens_details"), dict) else {})
        cost = info.price.cost(result.tokens_in or 0, result.tokens_out or 0,
                               cached_in=_int(details_in.get("cached_tokens")),
                               reasoning=_int(details_out.get("reasoning_tokens")))
        result.cost_usd = str(cost.normalize()) if cost else "0"
        result.cost_note = f"price x tokens (price from {info.source})"


@router.post("/api/compare", response_model=CompareReply)
async def compare(request: Request, body: CompareBody):
    """The prompt to every target through the edge, in parallel: each answer, latency, tokens and cost."""
    if request.scope.get("state", {}).get("admin_role") != ADMIN:
        raise HTTPException(403, "comparing spends money: the admin credential only")
    edge = EdgeSettings()
    timeout = httpx.Timeout(TIMEOUT_S, connect=5.0)
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=timeout, trust_env=False) as client:
        results = list(await asyncio.gather(*(_ask_one(client, t, body) for t in body.targets)))
    await _price(request, results)
    return JSONResponse(CompareReply(results=[r for r, _ in results]).model_dump(mode="json"))
