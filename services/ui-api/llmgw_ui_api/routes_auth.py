"""The web UI's login: ``POST /api/login``, ``POST /api/logout``, ``GET /api/session``.

``POST /api/login`` with ``{"token": "<admin or read-only token>"}`` and the header ``x-llmgw-csrf: 1``
(no login from another site's form) sets the session cookie ``llmgw_session``: an opaque random id
(256 bits) mapped to the token's role, HttpOnly, SameSite=Strict, Path=/api, Secure when the request
came over https, expiring after 12 hours. Sessions live in the NATS key-value bucket ``LLMGW_SESSIONS``
(by the id's SHA-256; ``llmgw_common.admin_auth.SessionStore``): every ui-api replica knows them, a
logout on one ends the session on all, a restart logs nobody out. A wrong token is a 401 and counts
against the address like a wrong bearer token (see ``auth``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from llmgw_common.admin_auth import (
    CSRF_HEADER,
    MAX_TOKEN_CHARS,
    SESSION_COOKIE,
    SESSION_COOKIE_PATH,
    SessionStoreUnavailable,
)

from .auth import WWW_AUTHENTICATE, client_address, retry_after

router = APIRouter()


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)


class SessionInfo(BaseModel):
    role: Literal["admin", "readonly"]
    via: Literal["bearer", "session"]
    expires_at: datetime | None = None  # a session's end; None for a bearer token
    csrf_header: str = CSRF_HEADER  # send it, value "1", with every state-changing call


class LoggedOut(BaseModel):
    logged_out: bool


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


@router.post("/api/login", response_model=SessionInfo)
async def login(request: Request, body: LoginBody):
    auth = request.app.state.admin_auth
    if request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(403, f"login needs the header `{CSRF_HEADER}: 1`")
    address = client_address(request.scope)
    wait = auth.limiter.blocked_for(address)
    if wait > 0:
        raise HTTPException(429, "too many failed credential checks from this address; wait before trying again",
                            headers={"retry-after": retry_after(wait)})
    role = auth.role_of(body.token)
    if role is None:
        wait = await auth.limiter.failed(address)
        if wait > 0:  # past the limit, reached through other replicas
            raise HTTPException(429, "too many failed credential checks from this address; wait before trying "
                                     "again", headers={"retry-after": retry_after(wait)})
        raise HTTPException(401, "invalid admin token", headers={"www-authenticate": WWW_AUTHENTICATE})
    try:
        session_id, session = await auth.sessions.create(role)
    except SessionStoreUnavailable:
        raise HTTPException(503, "no login session can be stored right now (NATS does not answer, or the session "
                                 "bucket is full); try again, or use the token as a bearer token") from None
    response = JSONResponse({"role": role, "via": "session", "expires_at": _iso(session.expires_at),
                             "csrf_header": CSRF_HEADER})
    response.set_cookie(SESSION_COOKIE, session_id, max_age=int(auth.sessions.ttl_s), path=SESSION_COOKIE_PATH,
                        secure=request.url.scheme == "https", httponly=True, samesite="strict")
    return response


@router.post("/api/logout", response_model=LoggedOut)
async def logout(request: Request):
    """Ends the caller's session (the cookie is cleared); with a bearer token there is nothing to end."""
    session_id = request.state.admin_session
    if session_id:
        try:
            await request.app.state.admin_auth.sessions.drop(session_id)
        except SessionStoreUnavailable:
            raise HTTPException(503, "the session cannot be ended right now (its store, NATS, does not answer); "
                                     "try again") from None
    response = JSONResponse({"logged_out": bool(session_id)})
    response.delete_cookie(SESSION_COOKIE, path=SESSION_COOKIE_PATH, secure=request.url.scheme == "https",
                           httponly=True, samesite="strict")
    return response


@router.get("/api/session", response_model=SessionInfo)
async def session_info(request: Request):
    """Who the caller is: the web UI cannot read its HttpOnly cookie, so it asks."""
    state = request.state
    expires = _iso(state.admin_session_expires_at) if state.admin_session_expires_at else None
    return JSONResponse({"role": state.admin_role, "via": state.admin_via, "expires_at": expires,
                         "csrf_header": CSRF_HEADER})
