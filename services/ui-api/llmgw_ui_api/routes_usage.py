"""Usage routes: live windows, history, the request log, and the dev-only simulator.

- ``GET /api/usage/current``: the live Redis windows per provider and model.
- ``GET /api/usage/history``: bucketed totals (``bucket_s`` 60..86400) with filters
  ``provider``, ``model``, ``key_id``, ``status`` (ok | error), ``group_by``
  (comma separated: provider, model, key_id), ``top`` + ``order_by``
  (requests | errors | tokens | cost), ``since`` / ``until`` (ISO 8601), ``limit``.
  Served from the per-minute rollups whenever the query allows it.
- ``GET /api/requests``: the request log, newest first, with filters ``provider``,
  ``model``, ``key_id``, ``request_id``, ``status`` (a code, or ok | error),
  ``since`` / ``until``; ``limit`` per page and ``cursor`` = ``next_cursor`` of the
  previous page (stable: ordered by time, then event id).
- ``POST /api/dev/simulate``: synthetic usage events into the stream; answers 403
  unless the usage service runs with ``LLMGW_DEV_SIMULATE=1``.

Parameters are validated here into the same messages the usage service takes;
anything wrong is a 400 with a JSON error naming the parameter, never a 500.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.messages import (
    UsageCurrent,
    UsageCurrentQuery,
    UsageHistory,
    UsageHistoryQuery,
    UsageRequests,
    UsageRequestsQuery,
    UsageSimulate,
    UsageSimulated,
)

from .nats_client import ask

router = APIRouter()

SERVICE = "the usage service"
HISTORY_PARAMS = {"since", "until", "bucket_s", "provider", "model", "key_id", "status", "group_by", "top",
                  "order_by", "limit"}
REQUESTS_PARAMS = {"since", "until", "provider", "model", "key_id", "request_id", "status", "limit", "cursor",
                   "include_bodies"}
LIST_PARAMS = {"group_by"}


def _params(request: Request, allowed: set[str]) -> dict:
    """Query parameters as a dict; unknown or repeated ones are a 400 (a typo should not pass silently)."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise HTTPException(400, f"unknown query parameter(s): {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(allowed))}")
    out: dict = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        if name in LIST_PARAMS:
            out[name] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        elif len(values) > 1:
            raise HTTPException(400, f"query parameter {name} given {len(values)} times")
        else:
            out[name] = values[0]
    return out


def _invalid(what: str, exc: ValidationError) -> HTTPException:
    """A 400 naming the first few bad fields of the ``what`` ("parameters", "body")."""
    parts = [f"{'.'.join(str(x) for x in e['loc']) or what}: {e['msg']}" for e in exc.errors()[:5]]
    return HTTPException(400, f"invalid {what}: " + "; ".join(parts))


def _validate(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid("parameters", exc) from None


@router.get("/api/usage/current")
async def usage_current(request: Request):
    reply = await ask(request.app, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/usage/history")
async def usage_history(request: Request):
    params = _params(request, HISTORY_PARAMS)
    if "status" in params:
        params["status_class"] = params.pop("status")
    query = _validate(UsageHistoryQuery, params)
    reply = await ask(request.app, subjects.USAGE_QUERY_HISTORY, query, UsageHistory, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/requests")
async def request_log(request: Request):
    params = _params(request, REQUESTS_PARAMS)
    status = params.get("status")
    if status in ("ok", "error"):
        params["status_class"] = params.pop("status")
    query = _validate(UsageRequestsQuery, params)
    reply = await ask(request.app, subjects.USAGE_QUERY_REQUESTS, query, UsageRequests, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


@router.post("/api/dev/simulate")
async def dev_simulate(request: Request):
    body = await request.body()
    try:
        command = UsageSimulate.decode(body or b"{}")
    except ValidationError as exc:
        raise _invalid("body", exc) from None
    except ValueError:
        raise HTTPException(400, "invalid body: not JSON") from None
    reply = await ask(request.app, subjects.USAGE_SIMULATE, command, UsageSimulated, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))
