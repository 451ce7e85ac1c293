"""Gateway API keys in the admin API (what ``llmgw keys`` does, for the web UI).

- ``GET /api/keys``: every key, never a secret or its hash (``KeyRecord.public()``).
- ``POST /api/keys`` (``name``, ``models``, ``providers``, ``limits``, ``expires_at``): 201 with the
  record and its ``secret``, shown this once.
- ``GET /api/keys/{id}``; ``POST /api/keys/{id}/rotate`` (a new secret, once; the old one stops
  working; a revoked key: 409); ``POST /api/keys/{id}/revoke`` (every edge refuses it within a second).
- ``GET /api/keys/{id}/usage``: the key's live windows (scope ``k:<id>``) and this calendar month's
  totals (in ``keys.budget_timezone``), each next to the key's limits, and the month day by day (``days``,
  null when ClickHouse could not be read); asked of the usage service.

The records live in the JetStream key-value bucket (``llmgw_common.keys.KeyStore``), opened on first
use. Bad input: 400 naming the field; an unknown id: 404.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from llmgw_common import subjects
from llmgw_common.keys import KeyLimits, KeyRecord, KeyStore
from llmgw_common.messages import DayTotals, KeyUsage, KeyUsageQuery, WindowTotals
from llmgw_common.windows import WINDOWS

from .nats_client import ask

router = APIRouter()

# A key as the API shows it: KeyRecord without its hash (derived, so a new field shows up here too).
KeyView = create_model("KeyView", **{name: (info.annotation, info) for name, info in KeyRecord.model_fields.items()
                                     if name != "hash"})
KeyId = Annotated[str, Path(max_length=64, description="the key's id (12 lowercase hex characters)")]
Pattern = Annotated[str, Field(min_length=1, max_length=256)]


class KeyList(BaseModel):
    keys: list[KeyView]  # type: ignore[valid-type]


class KeyWithSecret(BaseModel):
    key: KeyView  # type: ignore[valid-type]
    secret: str = Field(description="the key's secret: shown this once, only its hash is stored")


class OneKey(BaseModel):
    key: KeyView  # type: ignore[valid-type]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="who or what uses it (team-a, ci, ...)")
    models: list[Pattern] = Field(default_factory=list, max_length=64, description="globs; empty: every model")
    providers: list[Pattern] = Field(default_factory=list, max_length=64, description="empty: every provider")
    limits: KeyLimits = Field(default_factory=KeyLimits)
    expires_at: datetime | None = Field(default=None, description="ISO 8601; no zone: UTC")

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        v = v if v.tzinfo is not None else v.replace(tzinfo=timezone.utc)
        if v <= datetime.now(timezone.utc):
            raise ValueError("must be in the future")
        return v


class UsedAgainstLimits(WindowTotals):
    """A window's (or the month's) usage and the key's limits for it (null: no limit)."""

    requests_limit: int | None = None
    tokens_limit: int | None = None
    cost_limit_usd: Decimal | None = None


class MonthUsage(UsedAgainstLimits):
    month: str  # YYYY-MM
    timezone: str
    starts_at: datetime
    ends_at: datetime


class KeyUsageReply(BaseModel):
    key_id: str
    at: datetime
    windows: dict[str, UsedAgainstLimits]  # minute, hour, day
    month: MonthUsage
    days: list[DayTotals] | None = None  # every day of the month (its budget: month.cost_limit_usd)


async def _store(request: Request) -> KeyStore:
    app = request.app
    store = getattr(app.state, "key_store", None)
    if store is None:
        try:
            store = app.state.key_store = await KeyStore.open(app.state.nc.jetstream())
        except (NatsError, OSError, TimeoutError) as exc:
            raise HTTPException(503, f"the key store (NATS key-value bucket) is not answering: "
                                     f"{type(exc).__name__}") from None
    return store


async def _call(coro):
    try:
        return await coro
    except (NatsError, OSError, TimeoutError) as exc:
        raise HTTPException(503, f"the key store (NATS key-value bucket) is not answering: "
                                 f"{type(exc).__name__}") from None


async def _record(request: Request, key_id: str) -> KeyRecord:
    record = await _call((await _store(request)).get(key_id))
    if record is None:
        raise HTTPException(404, f"no key {key_id[:64]}")
    return record


@router.get("/api/keys", response_model=KeyList)
async def list_keys(request: Request):
    records = await _call((await _store(request)).list())
    return {"keys": [r.public() for r in records]}


@router.post("/api/keys", response_model=KeyWithSecret, status_code=201)
async def create_key(request: Request, body: KeyCreate):
    store = await _store(request)
    record, secret = await _call(store.create(body.name, models=body.models, providers=body.providers,
                                              limits=body.limits, expires_at=body.expires_at))
    return {"key": record.public(), "secret": secret}


@router.get("/api/keys/{key_id}", response_model=OneKey)
async def get_key(request: Request, key_id: KeyId):
    return {"key": (await _record(request, key_id)).public()}


@router.post("/api/keys/{key_id}/rotate", response_model=KeyWithSecret)
async def rotate_key(request: Request, key_id: KeyId):
    record = await _record(request, key_id)
    if record.revoked_at is not None:
        raise HTTPException(409, f"key {key_id} is revoked; create a new one")
    rotated = await _call((await _store(request)).rotate(key_id))
    if rotated is None:  # revoked meanwhile
        raise HTTPException(409, f"key {key_id} is revoked; create a new one")
    record, secret = rotated
    return {"key": record.public(), "secret": secret}


@router.post("/api/keys/{key_id}/revoke", response_model=OneKey)
async def revoke_key(request: Request, key_id: KeyId):
    await _record(request, key_id)
    record = await _call((await _store(request)).revoke(key_id))
    if record is None:
        raise HTTPException(404, f"no key {key_id}")
    return {"key": record.public()}


def _against(totals: WindowTotals, limits: KeyLimits, period: str) -> dict:
    return {**totals.model_dump(), "requests_limit": getattr(limits, f"requests_per_{period}", None),
            "tokens_limit": getattr(limits, f"tokens_per_{period}", None),
            "cost_limit_usd": getattr(limits, f"cost_per_{period}", None)}


@router.get("/api/keys/{key_id}/usage", response_model=KeyUsageReply)
async def key_usage(request: Request, key_id: KeyId):
    """The key's requests, tokens and cost in its live windows and this calendar month, against its limits."""
    record = await _record(request, key_id)
    usage = await ask(request.app, subjects.USAGE_QUERY_KEY, KeyUsageQuery(key_id=record.id), KeyUsage,
                      "the usage service")
    windows = {w.name: _against(usage.windows.get(w.name, WindowTotals()), record.limits, w.name) for w in WINDOWS}
    month = {**_against(usage.month_totals, record.limits, "month"), "month": usage.month,
             "timezone": usage.timezone, "starts_at": usage.month_start, "ends_at": usage.month_end}
    return {"key_id": record.id, "at": usage.at, "windows": windows, "month": month, "days": usage.days}
