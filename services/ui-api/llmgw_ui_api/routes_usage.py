"""Usage routes: live windows, history, the request log, and the dev-only simulator.

- ``GET /api/usage/current``: the live Redis windows per provider and model.
- ``GET /api/usage/history``: bucketed totals (``bucket_s`` 60..86400) with filters
  ``provider``, ``model``, ``key_id``, ``status`` (ok | error), ``group_by``
  (comma separated: provider, model, key_id), ``top`` + ``order_by``
  (requests | errors | tokens | cost), ``since`` / ``until`` (ISO 8601), ``limit``.
  Served from the per-minute rollups whenever the query allows it.
- ``GET /api/usage/stats``: requests, errors, 429s, error rate and p50/p95 latency and time to first
  token per provider and per model over ``since`` .. ``until`` (the overview's 24 h and 7 d), from ClickHouse.
- ``GET /api/requests``: the request log, newest first, with filters ``provider``,
  ``model``, ``key_id``, ``request_id``, ``status`` (a code, or ok | error),
  ``since`` / ``until``; ``limit`` per page and ``cursor`` = ``next_cursor`` of the
  previous page (stable: ordered by time, then event id).
- ``POST /api/dev/simulate``: synthetic usage events into the stream; answers 403
  unless the usage service runs with ``LLMGW_DEV_SIMULATE=1``.
- ``GET /api/usage/dead-letters``: stream messages the usage service refused (not an event, out of
  range, too large), newest first: ``limit``, ``cursor``, ``reason``; ``count=1`` for the counts only.

Parameters are validated here into the same messages the usage service takes;
anything wrong is a 400 with a JSON error naming the parameter, never a 500.

Replies: the usage service cuts every reply to one NATS message and gives a
``next_cursor`` for the rest. ``/api/requests`` and ``/api/usage/dead-letters``
pass it on (a page may hold fewer rows than ``limit``); ``/api/usage/history``
and ``/api/usage/current`` follow it themselves, up to ``MAX_FOLLOWED_PAGES``
pages, and answer ``next_cursor`` (to pass back as ``cursor``) only beyond that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.messages import (
    FILTER_MAX_CHARS,
    UsageCurrent,
    UsageCurrentQuery,
    UsageDeadLetters,
    UsageDeadLettersQuery,
    UsageHistory,
    UsageHistoryQuery,
    UsageRequests,
    UsageRequestsQuery,
    UsageSimulate,
    UsageSimulated,
    UsageStats,
    UsageStatsQuery,
)

from .nats_client import ask

router = APIRouter()

SERVICE = "the usage service"
HISTORY_PARAMS = {"since", "until", "bucket_s", "provider", "model", "key_id", "status", "group_by", "top",
                  "order_by", "limit", "cursor"}
REQUESTS_PARAMS = {"since", "until", "provider", "model", "key_id", "request_id", "status", "limit", "cursor",
                   "include_bodies"}
STATS_PARAMS = {"since", "until", "limit"}
DEAD_PARAMS = {"cursor", "limit", "reason", "count"}
LIST_PARAMS = {"group_by"}
MAX_LIST_VALUES = 8  # values of a list parameter (group_by), over all its repetitions
# pages of one history / current answer ui-api asks for before it hands the client a next_cursor
MAX_FOLLOWED_PAGES = 32

# the parameters, declared for the OpenAPI document (the routes read them through _params, which also
# refuses unknown and repeated ones); bounds as the usage messages have them
Text = Annotated[str | None, Query(max_length=FILTER_MAX_CHARS)]
When = Annotated[datetime | None, Query(description="ISO 8601; no zone: UTC")]
# a cursor is base64url text; bounded well below what the HTTP server takes in a request line (uvicorn
# answers a head over 80 kB itself, in plain text), even percent-encoded at 12 bytes a character
Cursor = Annotated[str | None, Query(max_length=4096, pattern=r"^[A-Za-z0-9_=-]*$",
                                     description="next_cursor of the previous page")]


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
            if len(out[name]) > MAX_LIST_VALUES:
                raise HTTPException(400, f"query parameter {name}: at most {MAX_LIST_VALUES} values")
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


@router.get("/api/usage/current", response_model=UsageCurrent)
async def usage_current(request: Request):
    _params(request, set())
    reply = await ask(request.app, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(), UsageCurrent, SERVICE)
    pages = 1
    while reply.next_cursor is not None and pages < MAX_FOLLOWED_PAGES:
        more = await ask(request.app, subjects.USAGE_QUERY_CURRENT, UsageCurrentQuery(cursor=reply.next_cursor),
                         UsageCurrent, SERVICE)
        reply.scopes += more.scopes
        reply.next_cursor = more.next_cursor
        pages += 1
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/usage/history", response_model=UsageHistory)
async def usage_history(
    request: Request,
    since: When = None,
    until: When = None,
    bucket_s: Annotated[int | None, Query(ge=60, le=86400)] = None,
    provider: Text = None,
    model: Text = None,
    key_id: Text = None,
    status: Annotated[Literal["ok", "error"] | None, Query()] = None,
    group_by: Annotated[str | None, Query(max_length=64, description="comma separated: provider, model, key_id")] = None,
    top: Annotated[int | None, Query(gt=0, le=1000)] = None,
    order_by: Annotated[Literal["requests", "errors", "tokens", "cost"] | None, Query()] = None,
    limit: Annotated[int | None, Query(gt=0, le=100_000)] = None,
    cursor: Cursor = None,
):
    params = _params(request, HISTORY_PARAMS)
    if "status" in params:
        params["status_class"] = params.pop("status")
    query = _validate(UsageHistoryQuery, params)
    reply = await ask(request.app, subjects.USAGE_QUERY_HISTORY, query, UsageHistory, SERVICE)
    pages = 1
    while reply.next_cursor is not None and pages < MAX_FOLLOWED_PAGES:
        more = await ask(request.app, subjects.USAGE_QUERY_HISTORY,
                         query.model_copy(update={"cursor": reply.next_cursor}), UsageHistory, SERVICE)
        reply.rows += more.rows
        reply.totals += more.totals
        reply.next_cursor = more.next_cursor
        pages += 1
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/usage/stats", response_model=UsageStats)
async def usage_stats(
    request: Request,
    since: Annotated[datetime, Query(description="ISO 8601; no zone: UTC")],
    until: When = None,
    limit: Annotated[int | None, Query(gt=0, le=2000)] = None,
):
    """Errors, 429s and latency percentiles per provider, each followed by its models, busiest first."""
    query = _validate(UsageStatsQuery, _params(request, STATS_PARAMS))
    reply = await ask(request.app, subjects.USAGE_QUERY_STATS, query, UsageStats, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/requests", response_model=UsageRequests)
async def request_log(
    request: Request,
    since: When = None,
    until: When = None,
    provider: Text = None,
    model: Text = None,
    key_id: Text = None,
    request_id: Text = None,
    status: Annotated[str | None, Query(max_length=5, description="an HTTP status, or ok | error")] = None,
    limit: Annotated[int | None, Query(gt=0, le=1000)] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
    include_bodies: bool | None = None,
):
    params = _params(request, REQUESTS_PARAMS)
    status = params.get("status")
    if status in ("ok", "error"):
        params["status_class"] = params.pop("status")
    query = _validate(UsageRequestsQuery, params)
    reply = await ask(request.app, subjects.USAGE_QUERY_REQUESTS, query, UsageRequests, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


@router.get("/api/usage/dead-letters", response_model=UsageDeadLetters)
async def dead_letters(
    request: Request,
    cursor: Annotated[int | None, Query(ge=1, description="next_cursor of the previous page")] = None,
    limit: Annotated[int | None, Query(gt=0, le=500)] = None,
    reason: Annotated[str | None, Query(max_length=64, description="too_large, invalid, no_key, timestamp, "
                                        "out_of_range, too_long, rejected")] = None,
    count: Annotated[bool | None, Query(description="1: only total and by_reason")] = None,
):
    """Stream messages the usage service refused, newest first, with their counts (total, by reason)."""
    params = _params(request, DEAD_PARAMS)
    if "count" in params:
        params["count_only"] = params.pop("count")
    query = _validate(UsageDeadLettersQuery, params)
    reply = await ask(request.app, subjects.USAGE_QUERY_DEAD, query, UsageDeadLetters, SERVICE)
    return JSONResponse(reply.model_dump(mode="json"))


SIMULATE_BODY = {"requestBody": {"content": {"application/json": {"schema": UsageSimulate.model_json_schema()}}}}


@router.post("/api/dev/simulate", response_model=UsageSimulated, openapi_extra=SIMULATE_BODY)
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
