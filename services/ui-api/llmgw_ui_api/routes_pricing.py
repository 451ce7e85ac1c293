"""``GET /api/pricing``: every configured model's effective price and where it came from.

Asked of the pricing service over NATS (``llmgw.pricing.list``); the logical
model names are joined from the config file when it is readable. Flat-rate
fees (``monthly_fee_usd``) are reported per provider: a subscription covers
the provider, so each provider's largest fee counts once in the total.
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, HTTPException, Request
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.config import ConfigError, load_config_or_default
from llmgw_common.messages import PriceInfo, PriceList, PriceLookup
from llmgw_common.nats_conn import RemoteError, request as nats_request

router = APIRouter()


def _logical_names(request: Request) -> dict[tuple[str, str], list[str]]:
    path = request.app.state.settings.config_path
    try:
        config = load_config_or_default(path)
    except ConfigError:
        return {}
    names: dict[tuple[str, str], list[str]] = {}
    for p in config.providers:
        for m in p.models:
            names.setdefault((p.id, m.upstream_name), []).append(m.name)
    return names


def _entry(info: PriceInfo, logical: list[str]) -> dict:
    price = info.price
    return {
        "provider": info.provider,
        "model": info.model,  # upstream name
        "models": logical,  # logical names clients ask for
        "source": info.source,
        "matched": info.matched,
        "as_of": info.as_of.isoformat() if info.as_of else None,
        "price": None if price is None else price.model_dump(mode="json"),
        "free": None if price is None else price.is_free,
        "monthly_fee_usd": None if price is None or not price.monthly_fee_usd else str(price.monthly_fee_usd),
    }


@router.get("/api/pricing")
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
    return JSONResponse({
        "models": [_entry(p, logical.get((p.provider, p.model), [])) for p in reply.prices],
        "flat_fees": [{"provider": k, "monthly_fee_usd": str(v)} for k, v in sorted(fees.items())],
        "monthly_flat_total_usd": str(sum(fees.values(), Decimal(0))),
        "status": None if reply.status is None else reply.status.model_dump(mode="json"),
    })
