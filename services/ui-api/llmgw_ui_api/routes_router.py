"""Router state and manual control: ``GET /debug/router`` (also ``GET /api/router/state``),
``POST /api/router/pin``, ``POST /api/router/smart``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.messages import PinCommand, RouterState, RouterStateQuery, SmartCommand

from .nats_client import ask

router = APIRouter()


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # a provider id as the config allows it (lowercase letters, digits, '-', '_'; at most 63); null: automatic
    provider: str | None = Field(default=None, min_length=1, max_length=64)


class SmartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None  # null: toggle


class PinReply(BaseModel):
    pinned: str | None


class SmartReply(BaseModel):
    smart: bool


@router.get("/debug/router", response_model=RouterState)
@router.get("/api/router/state", response_model=RouterState)  # the same under /api, where the login cookie goes
async def debug_router(request: Request):
    """Per provider and model: each window against its limit, cooldown or breaker, in flight, latency."""
    state = await ask(request.app, subjects.ROUTER_STATE, RouterStateQuery(), RouterState, "the router")
    return JSONResponse(state.model_dump(mode="json"))


@router.post("/api/router/pin", response_model=PinReply)
async def pin(request: Request, body: PinBody):
    state = await ask(request.app, subjects.ROUTER_PIN, PinCommand(provider=body.provider), RouterState, "the router")
    return JSONResponse({"pinned": state.pinned})


@router.post("/api/router/smart", response_model=SmartReply)
async def smart(request: Request, body: SmartBody):
    state = await ask(request.app, subjects.ROUTER_SMART, SmartCommand(enabled=body.enabled), RouterState,
                      "the router")
    return JSONResponse({"smart": state.smart})
