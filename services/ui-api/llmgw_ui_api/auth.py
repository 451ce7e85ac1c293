"""Who may call the admin API: every route but ``/healthz`` and ``/api/health`` needs a credential.

``AuthMiddleware`` runs before anything else (before the body is read, before routing: an unknown path
gets 401 like a known one, and ``/openapi.json`` is covered too), so a route added later is closed
without doing anything. A credential is either

- ``Authorization: Bearer <token>``: the admin token or the read-only one (``llmgw_common.admin_auth``);
- the session cookie ``llmgw_session`` that ``POST /api/login`` sets (the web UI). A state-changing
  call (any method but GET, HEAD, OPTIONS) authenticated by the cookie must also carry
  ``x-llmgw-csrf: 1``: a page of another site cannot send a custom header without a CORS preflight,
  which ui-api never grants; SameSite=Strict is the second line.

An Authorization header, when present, is the credential (a wrong one is refused even next to a valid
cookie). The read-only role may call GET (and HEAD, OPTIONS) and ``POST /api/logout``; anything else
is 403. Wrong tokens (as bearer or to ``/api/login``) count per client address, in Redis across every
ui-api replica (``llmgw_common.brute_force``): past ``FAILURES_ALLOWED`` in ``FAILURE_WINDOW_S`` every
token from that address gets 429 with Retry-After without being checked; a valid session keeps working.
Sessions are checked against the shared bucket (``SessionStore``); with it away a cookie gets 503.
Refusals come in ui-api's one error shape; a 401 carries ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from llmgw_common.admin_auth import (
    ADMIN,
    CSRF_HEADER,
    READONLY,
    SESSION_COOKIE,
    AdminCredentials,
    SessionStore,
    SessionStoreUnavailable,
    bearer_token,
)
from llmgw_common.brute_force import ADMIN_REALM, SharedFailureLimiter

from .errors import error_body
from .web import is_open as is_web_ui

log = logging.getLogger("llmgw.ui-api")

OPEN_PATHS = frozenset({"/healthz", "/api/health"})  # no credential: liveness and health only
LOGIN_PATH = "/api/login"  # takes the token in its body (checked by the route)
LOGOUT_PATH = "/api/logout"  # the read-only role may end its own session
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WWW_AUTHENTICATE = 'Bearer realm="llmgw-admin"'


@dataclass
class AdminAuth:
    """The ui-api process's credentials, the shared browser sessions and failure counts (all set at start-up:
    before it, every credential is refused and failures are counted in the process)."""

    credentials: AdminCredentials | None = None
    sessions: SessionStore | None = None
    limiter: SharedFailureLimiter = field(default_factory=lambda: SharedFailureLimiter(ADMIN_REALM))

    def role_of(self, token: str) -> str | None:
        return None if self.credentials is None else self.credentials.role_of(token)


def client_address(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def retry_after(wait_s: float) -> str:
    return str(max(1, int(wait_s + 0.999)))


class AuthMiddleware:
    def __init__(self, app, auth: AdminAuth):
        self.app = app
        self.auth = auth

    @staticmethod
    async def _refuse(send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(error_body(status, message, code)).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # none served; one added later would need a check of its own
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"] == LOGIN_PATH or \
                is_web_ui(scope["path"]):  # the web UI's page and built files hold no data (web.py)
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        method = scope["method"].upper()
        address = client_address(scope)
        authorization = conn.headers.get("authorization")
        session_id = session = None
        if authorization is not None:
            token = bearer_token(authorization)
            if token is None:
                await self._refuse(send, 401, "the admin API takes `Authorization: Bearer <admin token>`",
                                   "unauthorized", {"www-authenticate": WWW_AUTHENTICATE})
                return
            wait = self.auth.limiter.blocked_for(address)
            if wait > 0:
                await self._refuse(send, 429, "too many failed credential checks from this address; wait "
                                              "before trying again", "too_many_failed_auth",
                                   {"retry-after": retry_after(wait)})
                return
            role = self.auth.role_of(token)
            if role is None:
                wait = await self.auth.limiter.failed(address)
                if wait > 0:  # past the limit, reached through other replicas
                    await self._refuse(send, 429, "too many failed credential checks from this address; wait "
                                                  "before trying again", "too_many_failed_auth",
                                       {"retry-after": retry_after(wait)})
                    return
                await self._refuse(send, 401, "invalid admin token", "unauthorized",
                                   {"www-authenticate": WWW_AUTHENTICATE})
                return
            via = "bearer"
        else:
            session_id = conn.cookies.get(SESSION_COOKIE)
            try:
                session = await self.auth.sessions.get(session_id) if session_id and self.auth.sessions else None
            except SessionStoreUnavailable:
                await self._refuse(send, 503, "login sessions cannot be checked right now (their store, NATS, "
                                              "does not answer); try again, or use the bearer token",
                                   "sessions_unavailable")
                return
            if session is None:
                message = ("session expired or unknown: log in again (POST /api/login)" if session_id else
                           "a credential is required: `Authorization: Bearer <admin token>` or a session "
                           "from POST /api/login")
                await self._refuse(send, 401, message, "unauthorized", {"www-authenticate": WWW_AUTHENTICATE})
                return
            if method not in SAFE_METHODS and conn.headers.get(CSRF_HEADER) != "1":
                await self._refuse(send, 403, f"a state-changing call with the session cookie needs the header "
                                              f"`{CSRF_HEADER}: 1`", "csrf_required")
                return
            role, via = session.role, "session"
        if role == READONLY and method not in SAFE_METHODS and scope["path"] != LOGOUT_PATH:
            await self._refuse(send, 403, "the read-only credential may not change anything", "read_only")
            return
        state = scope.setdefault("state", {})
        state["admin_role"], state["admin_via"], state["admin_session"] = role, via, session_id
        state["admin_session_expires_at"] = session.expires_at if session is not None else None
        await self.app(scope, receive, send)


__all__ = ["ADMIN", "READONLY", "AdminAuth", "AuthMiddleware", "OPEN_PATHS", "LOGIN_PATH", "LOGOUT_PATH",
           "SAFE_METHODS", "WWW_AUTHENTICATE", "client_address", "retry_after"]
