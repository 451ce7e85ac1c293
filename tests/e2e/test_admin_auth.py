"""The admin API's credentials: every route (enumerated from the app, so a new one cannot be left open)
refuses without a credential or with a wrong one, the read-only token may only read, the admin token
passes; the login cookie and its CSRF header; failed attempts limited per address; token files (0600,
private state dir, generated once, never logged); gateway keys managed through the API and used at the
edge."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.routing import APIRoute

from admin import ADMIN_HEADERS, ADMIN_TOKEN, READONLY_HEADERS, READONLY_TOKEN, UI_TOKENS, admin_client, stack_token
from fakes import FakeProvider
from llmgw_common.admin_auth import (
    ADMIN_TOKEN_ENV,
    CSRF_HEADER,
    SESSION_COOKIE,
    AdminCredentials,
    AdminTokenError,
    SESSIONS_BUCKET,
    SessionStore,
    ensure_admin_token,
    token_path,
)
from llmgw_common.brute_force import ADMIN_REALM, FAILURES_ALLOWED, FailureLimiter, SharedFailureLimiter
from llmgw_cli.infra import NatsServer
from llmgw_common.keys import key_id_of
from llmgw_common.nats_conn import connect_nats
from llmgw_ui_api.auth import LOGIN_PATH, LOGOUT_PATH, OPEN_PATHS
from llmgw_ui_api.main import UiApiSettings, create_app
from stacks import files_under, running_stack, wait_for, wait_until

pytestmark = pytest.mark.integration

WRITES = ("POST", "PUT", "PATCH", "DELETE")


# ---- tokens, sessions, limits (no server) ----------------------------------------------------------

def test_the_token_is_generated_once_into_a_private_file(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o777)  # as careless as it gets
    token, created = ensure_admin_token(state, environ={})
    assert created and token.startswith("llmgw-admin-") and len(token) >= 40
    path = token_path(state)
    assert path == state / "admin-token" and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o007 == 0  # no longer open to other users
    assert ensure_admin_token(state, environ={}) == (token, False)  # the same one from now on

    os.chmod(path, 0o644)  # loosened by hand: tightened again when read
    assert ensure_admin_token(state, environ={}) == (token, False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # the environment wins, and nothing is written for it
    given = "x" * 20
    assert ensure_admin_token(tmp_path / "other", environ={ADMIN_TOKEN_ENV: given}) == (given, False)
    assert not token_path(tmp_path / "other").exists()
    with pytest.raises(AdminTokenError):
        ensure_admin_token(tmp_path / "other", environ={ADMIN_TOKEN_ENV: "short"})
    path.write_text("\n")
    with pytest.raises(AdminTokenError, match="delete it"):
        ensure_admin_token(state, environ={})


def test_processes_starting_together_get_the_same_token(tmp_path):
    results: list[tuple[str, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_admin_token(tmp_path / "s", environ={})))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({token for token, _ in results}) == 1 and sum(created for _, created in results) == 1


def test_credentials_roles_and_the_two_files(tmp_path):
    creds = AdminCredentials.load(tmp_path, environ={})
    assert creds.role_of(creds.admin) == "admin" and creds.role_of(creds.readonly) == "readonly"
    assert creds.role_of(creds.admin + "x") is None and creds.role_of("") is None
    assert (tmp_path / "admin-token-readonly").read_text().strip() == creds.readonly
    assert creds.sources == {"admin": str(tmp_path / "admin-token"), "readonly": str(tmp_path / "admin-token-readonly")}
    with pytest.raises(AdminTokenError, match="differ"):
        AdminCredentials.load(tmp_path, environ={ADMIN_TOKEN_ENV: "y" * 20, "LLMGW_ADMIN_READONLY_TOKEN": "y" * 20})


async def test_sessions_are_kept_hashed_in_the_shared_bucket_and_expire(infra):
    nc = await connect_nats(infra.nats_url, "test-sessions")
    try:
        store = await SessionStore.open(nc.jetstream(), ttl_s=100)
        store.clock = lambda: 1000.0
        sid, session = await store.create("readonly")
        assert session.expires_at == 1100 and (await store.get(sid)).role == "readonly"
        # the bucket holds the id's SHA-256 with the role and the expiry, never the id
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        entry = await kv.get(hashlib.sha256(sid.encode()).hexdigest())
        assert json.loads(entry.value) == {"role": "readonly", "expires_at": 1100}
        assert sid not in [*(await kv.keys()), entry.value.decode()]
        store.clock = lambda: 1099.0
        assert (await store.get(sid)).role == "readonly"
        store.clock = lambda: 1100.0
        assert await store.get(sid) is None and await store.get("nope") is None and await store.get("") is None
        store.clock = lambda: 1000.0
        await store.drop(sid)
        assert await store.get(sid) is None
    finally:
        await nc.close()


def test_failed_attempts_are_limited_per_address():
    limiter = FailureLimiter(allowed=3, window_s=60)
    for i in range(3):
        assert limiter.blocked_for("a", now=100 + i) == 0
        limiter.failed("a", now=100 + i)
    assert limiter.blocked_for("a", now=103) == pytest.approx(57) and limiter.blocked_for("b", now=103) == 0
    assert limiter.blocked_for("a", now=160.5) == 0


# ---- every route, in-process ---------------------------------------------------------------------

def _routes(routes) -> list[APIRoute]:
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif getattr(route, "original_router", None) is not None:
            out += _routes(route.original_router.routes)
    return out


def _path(route: APIRoute) -> str:
    return route.path.replace("{key_id}", "0123456789ab")


@contextlib.asynccontextmanager
async def _app(infra, tmp_path, **settings):
    app = create_app(UiApiSettings(**{**UI_TOKENS, **settings}, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                                   LLMGW_CONFIG=str(tmp_path / "absent.yaml"), LLMGW_STATE_DIR=str(tmp_path / "state"),
                                   LLMGW_UI_QUERY_TIMEOUT_S="2"))
    async with app.router.lifespan_context(app):
        yield app


def _client(app, address: str = "127.0.0.1", base_url: str = "http://ui", **kwargs) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30, **kwargs)


def _refused(resp: httpx.Response, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, (resp.request.method, resp.request.url, resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error", body
    if code:
        assert body["error"]["code"] == code, body
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_every_route_needs_a_credential_and_the_read_only_one_only_reads(infra, tmp_path):
    async with _app(infra, tmp_path) as app:
        routes = [r for r in _routes(app.routes)]
        calls = [(m, r) for r in routes for m in sorted(r.methods)]
        assert len(calls) >= 20
        guarded = [(m, r) for m, r in calls if r.path not in OPEN_PATHS and r.path != LOGIN_PATH]
        assert {r.path for _, r in calls} - {r.path for _, r in guarded} == set(OPEN_PATHS) | {LOGIN_PATH}

        async with _client(app, "10.0.0.1") as anonymous, \
                _client(app, "10.0.0.2", headers={"authorization": "Bearer " + "w" * 40}) as wrong, \
                _client(app, "10.0.0.3", headers=READONLY_HEADERS) as viewer, \
                _client(app, "10.0.0.4", headers=ADMIN_HEADERS) as admin:
            for method, route in guarded:
                path = _path(route)
                _refused(await anonymous.request(method, path, json={}), 401, "unauthorized")
                _refused(await wrong.request(method, path, json={}), 401, "unauthorized")
                # more routes than wrong tokens allowed a minute
                app.state.admin_auth.limiter = SharedFailureLimiter(ADMIN_REALM, allowed=10_000)
                resp = await viewer.request(method, path, json={})
                if method in WRITES and route.path != LOGOUT_PATH:
                    _refused(resp, 403, "read_only")
                else:
                    assert resp.status_code not in (401, 403), (method, path, resp.text[:200])
                resp = await admin.request(method, path, json={})
                assert resp.status_code not in (401, 403, 429), (method, path, resp.text[:200])

            # the open ones stay open; everything else is closed, also what no route answers
            assert (await anonymous.get("/healthz")).status_code == 200
            assert (await anonymous.get("/api/health")).status_code in (200, 503)
            for path in ("/openapi.json", "/docs", "/redoc", "/api/nope", "/nope", "/healthz/", "/API/keys"):
                _refused(await anonymous.get(path), 401)
            assert (await anonymous.get("/")).headers["content-type"].startswith("text/html")  # the web UI's page
            assert (await admin.get("/openapi.json")).status_code == 200
            assert (await admin.get("/docs")).status_code == 404  # not served
            _refused(await anonymous.get("/api/keys", headers={"authorization": "Basic YTpi"}), 401)
            _refused(await anonymous.get("/api/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN} x"}), 401)
            _refused(await anonymous.get("/api/keys", headers={"authorization": ADMIN_TOKEN}), 401)
            assert (await admin.get("/api/session")).json() == {"role": "admin", "via": "bearer", "expires_at": None,
                                                                 "csrf_header": CSRF_HEADER}
            assert (await viewer.get("/api/session")).json()["role"] == "readonly"


def test_websockets_are_refused(tmp_path):
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = create_app(UiApiSettings(**UI_TOKENS, LLMGW_STATE_DIR=str(tmp_path)))
    client = TestClient(app)  # no lifespan: nothing is connected, nothing is needed
    for path in ("/api/keys", "/healthz", "/nope"):
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(path, headers=ADMIN_HEADERS):
                pass
    # and before start-up (no credentials loaded yet) every token is refused
    assert client.get("/api/keys", headers=ADMIN_HEADERS).status_code == 401


def _session_cookie(resp: httpx.Response) -> tuple[str, str]:
    """(session id, the Set-Cookie header's attributes, lowercased)."""
    header = next(v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    value, _, attributes = header.partition(";")
    return value.split("=", 1)[1], attributes.lower()


async def test_login_sets_a_strict_cookie_and_writes_need_the_csrf_header(infra, tmp_path):
    async with _app(infra, tmp_path) as app, _client(app, "10.1.0.1") as ui:
        login = {"token": ADMIN_TOKEN}
        _refused(await ui.post("/api/login", json=login), 403)  # no CSRF header: no login from another site
        csrf = {CSRF_HEADER: "1"}
        _refused(await ui.post("/api/login", json={"token": "wrong" * 5}, headers=csrf), 401)
        _refused(await ui.post("/api/login", json={"tok": ADMIN_TOKEN}, headers=csrf), 400)
        resp = await ui.post("/api/login", json=login, headers=csrf)
        assert resp.status_code == 200 and resp.json()["role"] == "admin" and resp.json()["expires_at"]
        assert ADMIN_TOKEN not in resp.text
        sid, attributes = _session_cookie(resp)
        assert len(sid) >= 40 and ADMIN_TOKEN not in sid
        for part in ("httponly", "samesite=strict", "path=/api", "max-age=43200"):
            assert part in attributes, attributes
        assert "secure" not in attributes  # plain http (a browser would drop a Secure cookie here)

        cookie = {"cookie": f"{SESSION_COOKIE}={sid}"}
        ui.cookies.clear()
        assert (await ui.get("/api/session", headers=cookie)).json()["via"] == "session"
        assert (await ui.get("/api/keys", headers=cookie)).status_code != 401
        # state-changing with the cookie alone: refused; with the header: through (no router: 503)
        _refused(await ui.post("/api/router/smart", json={}, headers=cookie), 403, "csrf_required")
        _refused(await ui.post("/api/router/smart", json={}, headers={**cookie, CSRF_HEADER: "yes"}), 403)
        assert (await ui.post("/api/router/smart", json={}, headers={**cookie, **csrf})).status_code == 503
        # a bearer header is the credential when present: a wrong one is refused even with a good cookie
        _refused(await ui.get("/api/keys", headers={**cookie, "authorization": "Bearer nope-nope-nope"}), 401)
        _refused(await ui.get("/api/keys", headers={"cookie": f"{SESSION_COOKIE}=forged"}), 401)

        out = await ui.post(LOGOUT_PATH, headers={**cookie, **csrf})
        assert out.status_code == 200 and out.json() == {"logged_out": True}
        assert 'max-age=0' in _session_cookie(out)[1] or "expires=" in _session_cookie(out)[1]
        _refused(await ui.get("/api/keys", headers=cookie), 401)

        # the read-only token logs in as a viewer: reads, may log out, changes nothing
        ui.cookies.clear()
        sid, _ = _session_cookie(await ui.post("/api/login", json={"token": READONLY_TOKEN}, headers=csrf))
        viewer = {"cookie": f"{SESSION_COOKIE}={sid}", **csrf}
        assert (await ui.get("/api/session", headers=viewer)).json()["role"] == "readonly"
        _refused(await ui.post("/api/router/pin", json={}, headers=viewer), 403, "read_only")
        assert (await ui.post(LOGOUT_PATH, headers=viewer)).status_code == 200

    # over https the cookie is Secure
    async with _app(infra, tmp_path) as app, _client(app, "10.1.0.2", base_url="https://ui") as ui:
        resp = await ui.post("/api/login", json={"token": ADMIN_TOKEN}, headers={CSRF_HEADER: "1"})
        assert "secure" in _session_cookie(resp)[1].split("; ")


async def test_guessing_is_slow(infra, tmp_path):
    async with _app(infra, tmp_path) as app, _client(app, "10.2.0.1") as ui, _client(app, "10.2.0.2") as other:
        csrf = {CSRF_HEADER: "1"}
        sid, _ = _session_cookie(await ui.post("/api/login", json={"token": ADMIN_TOKEN}, headers=csrf))
        ui.cookies.clear()
        statuses = [(await ui.get("/api/keys", headers={"authorization": f"Bearer guess-{i:020d}"})).status_code
                    for i in range(FAILURES_ALLOWED + 5)]
        assert statuses[:FAILURES_ALLOWED] == [401] * FAILURES_ALLOWED and set(statuses[FAILURES_ALLOWED:]) == {429}
        resp = await ui.get("/api/keys", headers=ADMIN_HEADERS)  # not even checked while blocked
        _refused(resp, 429, "too_many_failed_auth")
        assert int(resp.headers["retry-after"]) >= 1
        _refused(await ui.post("/api/login", json={"token": ADMIN_TOKEN}, headers=csrf), 429)
        # a session from before keeps working (it is no guess), and other addresses are not affected
        assert (await ui.get("/api/session", headers={"cookie": f"{SESSION_COOKIE}={sid}"})).status_code == 200
        assert (await other.get("/api/session", headers=ADMIN_HEADERS)).status_code == 200
        # wrong logins count too
        for _ in range(FAILURES_ALLOWED):
            await other.post("/api/login", json={"token": "g" * 30}, headers=csrf)
        _refused(await other.get("/api/session", headers=ADMIN_HEADERS), 429)


async def test_two_replicas_share_sessions_and_failure_counts(infra, tmp_path):
    """Two ui-api replicas on one NATS and one Redis (behind one proxy, as in a cluster): a login on one is
    valid on the other, a logout on the other ends it on the first, a session past its lifetime is refused
    by both; wrong tokens are counted across both."""
    async with _app(infra, tmp_path / "a") as a, _app(infra, tmp_path / "b") as b, \
            _client(a, "10.3.0.1") as on_a, _client(b, "10.3.0.1") as on_b:
        csrf = {CSRF_HEADER: "1"}
        sid, _ = _session_cookie(await on_a.post("/api/login", json={"token": ADMIN_TOKEN}, headers=csrf))
        on_a.cookies.clear()
        cookie = {"cookie": f"{SESSION_COOKIE}={sid}"}
        seen = (await on_b.get("/api/session", headers=cookie)).json()
        assert seen["role"] == "admin" and seen["via"] == "session" and seen["expires_at"]
        assert (await on_b.get("/api/keys", headers=cookie)).status_code == 200
        out = await on_b.post(LOGOUT_PATH, headers={**cookie, **csrf})
        assert out.json() == {"logged_out": True}
        _refused(await on_a.get("/api/session", headers=cookie), 401, "unauthorized")
        _refused(await on_b.get("/api/session", headers=cookie), 401, "unauthorized")

        # a session past its lifetime: refused by both replicas
        sid, _ = _session_cookie(await on_b.post("/api/login", json={"token": READONLY_TOKEN}, headers=csrf))
        on_b.cookies.clear()
        cookie = {"cookie": f"{SESSION_COOKIE}={sid}"}
        assert (await on_a.get("/api/session", headers=cookie)).json()["role"] == "readonly"
        for app in (a, b):
            sessions = app.state.admin_auth.sessions
            sessions.clock = lambda ttl=sessions.ttl_s: time.time() + ttl + 1
        _refused(await on_a.get("/api/session", headers=cookie), 401, "unauthorized")
        _refused(await on_b.get("/api/session", headers=cookie), 401, "unauthorized")

        # wrong tokens from one address, alternating between the replicas: blocked after FAILURES_ALLOWED
        async with _client(a, "10.3.0.2") as guess_a, _client(b, "10.3.0.2") as guess_b:
            for i in range(FAILURES_ALLOWED):
                _refused(await (guess_a, guess_b)[i % 2].get("/api/keys", headers={
                    "authorization": f"Bearer guess-{i:020d}"}), 401)
            for ui in (guess_a, guess_b):
                _refused(await ui.get("/api/keys", headers={"authorization": "Bearer guess-again-000000000"}), 429,
                         "too_many_failed_auth")


async def test_with_nats_away_a_session_cookie_gets_a_503_and_sessions_outlive_a_nats_restart(infra, tmp_path):
    server = NatsServer(tmp_path / "nats").start()  # its own: stopped and started again here
    try:
        own = SimpleNamespace(nats_url=server.url, redis_url=infra.redis_url)
        async with _app(own, tmp_path) as app, _client(app, "10.4.0.1") as ui:
            csrf = {CSRF_HEADER: "1"}
            sid, _ = _session_cookie(await ui.post("/api/login", json={"token": ADMIN_TOKEN}, headers=csrf))
            ui.cookies.clear()
            cookie = {"cookie": f"{SESSION_COOKIE}={sid}"}
            assert (await ui.get("/api/session", headers=cookie)).status_code == 200
            server.stop()
            refused = await ui.get("/api/session", headers=cookie)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "sessions_unavailable"
            login = await ui.post("/api/login", json={"token": ADMIN_TOKEN}, headers=csrf)
            assert login.status_code == 503 and set(login.json()) == {"error"}
            assert (await ui.get("/api/session", headers=ADMIN_HEADERS)).status_code == 200  # bearer: no NATS
            server.start()  # same store: the session is still there
            await wait_until(lambda: _status(ui.get("/api/session", headers=cookie), 200), timeout=30)
    finally:
        server.stop()


async def _status(response, status: int) -> bool:
    return (await response).status_code == status


async def test_a_generated_token_is_logged_by_where_it_is_never_by_value(infra, tmp_path, caplog):
    caplog.set_level("INFO")
    async with _app(infra, tmp_path, LLMGW_ADMIN_TOKEN="", LLMGW_ADMIN_READONLY_TOKEN="") as app:
        token = token_path(tmp_path / "state").read_text().strip()
        async with _client(app, headers={"authorization": f"Bearer {token}"}) as ui:
            assert (await ui.get("/api/session")).json()["role"] == "admin"
    assert str(token_path(tmp_path / "state")) in caplog.text and token not in caplog.text
    assert stat.S_IMODE(token_path(tmp_path / "state").stat().st_mode) == 0o600


# ---- the whole stack: token files, keys through the API, used at the edge -------------------------

@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    """Its own NATS (the runner's): keys created here must not lock the other tests' gateways."""
    config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models: [{{name: m}}, {{name: other}}]
usage:
  batch_wait_s: 0.1
"""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", ADMIN_TOKEN_ENV, "LLMGW_ADMIN_READONLY_TOKEN")}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    root = tmp_path_factory.mktemp("admin")
    with running_stack(root, config, env) as s:
        s.root = root
        yield s


def test_keys_through_the_admin_api_and_the_edge(stack):
    state: Path = stack.state_dir
    for name in ("admin-token", "admin-token-readonly"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o007 == 0
    ui_url = f"http://127.0.0.1:{stack.ui_port}"
    assert httpx.get(f"{ui_url}/api/keys").status_code == 401
    assert httpx.get(f"{ui_url}/healthz").status_code == 200
    edge = f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    with admin_client(stack) as ui, admin_client(stack, role="readonly") as viewer:
        # bad input: 400 naming the field; the viewer may not create
        bad = ui.post("/api/keys", json={"name": "x", "limits": {"requests_per_minute": -1}})
        assert bad.status_code == 400 and "limits.requests_per_minute" in bad.json()["error"]["message"]
        for body in ({"name": ""}, {"name": "x", "colour": 1}, {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
                     {"name": "x", "models": "m"}, {"name": "x", "limits": {"cost_per_month": "lots"}}):
            assert ui.post("/api/keys", json=body).status_code == 400, body
        assert viewer.post("/api/keys", json={"name": "nope"}).status_code == 403
        assert ui.get("/api/keys/0123456789ab").status_code == 404
        assert ui.post("/api/keys/0123456789ab/rotate").status_code == 404
        assert ui.get("/api/keys/..%2F..").status_code == 404

        created = ui.post("/api/keys", json={"name": "team-a", "models": ["m"],
                                              "limits": {"requests_per_minute": 100, "cost_per_month": "5"}})
        assert created.status_code == 201, created.text
        secret, key = created.json()["secret"], created.json()["key"]
        key_id = key["id"]
        assert key_id_of(secret) == key_id and "hash" not in key and key["name"] == "team-a"
        listed = viewer.get("/api/keys")
        assert listed.status_code == 200 and [k["id"] for k in listed.json()["keys"]] == [key_id]
        assert secret not in listed.text and "hash" not in listed.json()["keys"][0]
        shown = viewer.get(f"/api/keys/{key_id}").json()["key"]
        assert shown["limits"]["requests_per_minute"] == 100 and secret not in str(shown)

        # the edge now wants the key (it follows the store within moments)
        wait_for(lambda: httpx.post(edge, json=chat).status_code == 401, timeout=5, interval=0.05)
        ok = httpx.post(edge, json=chat, headers={"authorization": f"Bearer {secret}"}, timeout=30)
        assert ok.status_code == 200, ok.text
        assert httpx.post(edge, json={**chat, "model": "other"}, headers={"x-api-key": secret}).status_code == 403

        # its usage: live windows and this month, against its limits
        def used():
            body = viewer.get(f"/api/keys/{key_id}/usage").raise_for_status().json()
            return body if body["month"]["requests"] >= 1 and body["windows"]["minute"]["requests"] >= 1 else None

        usage = wait_for(used, timeout=20)
        assert usage["key_id"] == key_id and usage["windows"]["minute"]["requests_limit"] == 100
        assert usage["windows"]["hour"]["requests_limit"] is None and usage["month"]["cost_limit_usd"] == "5"
        assert usage["month"]["timezone"] == "UTC" and len(usage["month"]["month"]) == 7
        assert ui.get("/api/keys/0123456789ab/usage").status_code == 404

        # rotate: the new secret works, the old one no longer
        rotated = ui.post(f"/api/keys/{key_id}/rotate")
        assert rotated.status_code == 200 and viewer.post(f"/api/keys/{key_id}/rotate").status_code == 403
        new_secret = rotated.json()["secret"]
        assert new_secret != secret and key_id_of(new_secret) == key_id and rotated.json()["key"]["rotated_at"]
        wait_for(lambda: httpx.post(edge, json=chat, headers={"authorization": f"Bearer {secret}"}).status_code
                 == 401, timeout=5, interval=0.05)
        assert httpx.post(edge, json=chat, headers={"authorization": f"Bearer {new_secret}"},
                          timeout=30).status_code == 200

        # revoke: refused at the edge within a second or two; a revoked key is not rotated again
        assert viewer.post(f"/api/keys/{key_id}/revoke").status_code == 403
        revoked = ui.post(f"/api/keys/{key_id}/revoke")
        assert revoked.status_code == 200 and revoked.json()["key"]["revoked_at"]
        wait_for(lambda: httpx.post(edge, json=chat, headers={"authorization": f"Bearer {new_secret}"}).status_code
                 == 401, timeout=3, interval=0.05)
        assert ui.post(f"/api/keys/{key_id}/rotate").status_code == 409
        assert ui.post(f"/api/keys/{key_id}/revoke").status_code == 200  # again: nothing changes

    # no token, no secret in anything the stack wrote but the token files themselves
    tokens = [stack_token(stack), stack_token(stack, "readonly")]
    log_text = (stack.root / "stack.log").read_text(errors="replace")
    assert "admin-token" in log_text  # ui-api said where the token is
    for path in files_under(stack.root):
        if path.name in ("admin-token", "admin-token-readonly"):
            continue
        try:
            if path.stat().st_size >= 50_000_000:
                continue
            data = path.read_bytes()
        except FileNotFoundError:  # a temporary file of the running stack (chDB's inserts) gone meanwhile
            continue
        for secret_text in (*tokens, secret, new_secret):
            assert secret_text.encode() not in data, path
