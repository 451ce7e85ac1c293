"""Router state and manual control: ``GET /debug/router``, ``POST /api/router/pin``, ``POST /api/router/smart``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.messages import PinCommand, RouterState, RouterStateQuery, SmartCommand

from .nats_client import ask

router = APIRouter()


class PinBody(BaseModel):
    provider: str | None = None  # null: automatic routing


class SmartBody(BaseModel):
    enabled: bool | None = None  # null: toggle


@router.get("/debug/router")
async def debug_router(request: Request):
    """Per provider and model: each window against its limit, cooldown or breaker, in flight, latency."""
    state = await ask(request.app, subjects.ROUTER_STATE, RouterStateQuery(), RouterState, "the router")
    return JSONResponse(state.model_dump(mode="json"))


@router.post("/api/router/pin")
async def pin(request: Request, body: PinBody):
    state = await ask(request.app, subjects.ROUTER_PIN, PinCommand(provider=body.provider), RouterState, "the router")
    return JSONResponse({"pinned": state.pinned})


@router.post("/api/router/smart")
async def smart(request: Request, body: SmartBody):
    state = await ask(request.app, subjects.ROUTER_SMART, SmartCommand(enabled=body.enabled), RouterState,
                      "the router")
    return JSONResponse({"smart": state.smart})
