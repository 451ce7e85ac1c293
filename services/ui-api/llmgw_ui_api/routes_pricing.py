"""``GET /api/pricing``: every configured model's effective price and where it came from.

Asked of the pricing service over NATS (``llmgw.pricing.list``); the logical
model names are joined from the config file when it is readable. Flat-rate
fees (``monthly_fee_usd``) are reported per provider: a subscription covers
the provider, so each provider's largest fee counts once in the total. ``status`` says
which price table is in use (fetched now, the on-disk cache, the bundled snapshot)
and as of when, so the UI can say so when the public list cannot be fetched.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from pydantic import BaseModel
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.config import Price
from llmgw_common.messages import PriceInfo, PriceList, PriceLookup, PricingStatus
from llmgw_common.nats_conn import RemoteError, request as nats_request

router = APIRouter()


class PricingEntry(BaseModel):
    provider: str
    model: str  # upstream name
    models: list[str]  # logical names clients ask for
    source: Literal["config", "remote", "cache", "bundled", "unknown"]
    matched: str | None = None
    as_of: datetime | None = None
    price: Price | None = None
    free: bool | None = None
    monthly_fee_usd: Decimal | None = None


class FlatFee(BaseModel):
    provider: str
    monthly_fee_usd: Decimal


class PricingReply(BaseModel):
    models: list[PricingEntry]
    flat_fees: list[FlatFee]
    monthly_flat_total_usd: Decimal
    status: PricingStatus | None = None  # the price table in use: table (remote | cache | bundled), table_as_of


def _logical_names(request: Request) -> dict[tuple[str, str], list[str]]:
    config = request.app.state.config_follower.config  # the revision running
    names: dict[tuple[str, str], list[str]] = {}
    for p in config.providers:
        for m in p.models:
            names.setdefault((p.id, m.upstream_name), []).append(m.name)
    return names


def _entry(info: PriceInfo, logical: list[str]) -> PricingEntry:
    price = info.price
    return PricingEntry(
        provider=info.provider, model=info.model, models=logical, source=info.source, matched=info.matched,
        as_of=info.as_of, price=price, free=None if price is None else price.is_free,
        monthly_fee_usd=None if price is None or not price.monthly_fee_usd else price.monthly_fee_usd)


@router.get("/api/pricing", response_model=PricingReply)
async def list_pricing(request: Request):
    app = request.app
    try:
        reply = await nats_request(app.state.nc, subjects.PRICING_LIST, PriceLookup(keys=[]), PriceList,
                                   app.state.settings.query_timeout_s)
    except (NatsTimeoutError, NoRespondersError):
        raise HTTPException(503, "the pricing service is not answering") from None
    except RemoteError as exc:
        raise HTTPException(exc.status if 400 <= exc.status < 600 else 502, str(exc)) from None
    logical = _logical_names(request)
    fees: dict[str, Decimal] = {}
    for info in reply.prices:
        if info.price is not None and info.price.monthly_fee_usd:
            fees[info.provider] = max(fees.get(info.provider, Decimal(0)), info.price.monthly_fee_usd)
    answer = PricingReply(
        models=[_entry(p, logical.get((p.provider, p.model), [])) for p in reply.prices],
        flat_fees=[FlatFee(provider=k, monthly_fee_usd=v) for k, v in sorted(fees.items())],
        monthly_flat_total_usd=sum(fees.values(), Decimal(0)), status=reply.status)
    return JSONResponse(answer.model_dump(mode="json"))
