"""Two ui-api processes on one NATS and one Redis, as compose and Kubernetes run them behind a proxy: a login
at one is a session at the other, a logout at either ends it at both, failed logins count across both, and a
config saved through one is what the other serves (and a stale edit there is refused, not lost).

Real processes (``llmgw ui-api``, the container's command) against a NATS of this test's own (its sessions and
config buckets touch no other test) and the session's Redis.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from admin import ADMIN_TOKEN, UI_TOKENS
from llmgw_cli.infra import NatsServer, free_port
from llmgw_common.admin_auth import CSRF_HEADER, SESSION_COOKIE
from llmgw_common.brute_force import FAILURES_ALLOWED
from stacks import clear_failed_auth

pytestmark = pytest.mark.integration

START_S = 60.0
CSRF = {CSRF_HEADER: "1"}
SEED = "version: 1\nusage:\n  batch_size: 100\n"


@pytest.fixture
def nats(tmp_path):
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


@contextlib.contextmanager
def ui_api_replicas(tmp_path: Path, nats_url: str, redis_url: str, n: int = 2):
    """``n`` ui-api processes sharing NATS, Redis, the config seed and the state dir; their base URLs."""
    (tmp_path / "llmgw.yaml").write_text(SEED)
    procs, urls = [], []
    try:
        for i in range(1, n + 1):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMGW_METRICS"))}
            env.update(UI_TOKENS, NATS_URL=nats_url, REDIS_URL=redis_url, LLMGW_CONFIG=str(tmp_path / "llmgw.yaml"),
                       LLMGW_STATE_DIR=str(tmp_path / "state"), LLMGW_UI_HOST="127.0.0.1", LLMGW_UI_PORT=str(port),
                       LLMGW_REPLICA_ID=f"ui-api-{i}")
            with open(tmp_path / f"ui-api-{i}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "llmgw_cli.main", "ui-api"], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_S
        for i, (proc, url) in enumerate(zip(procs, urls), 1):
            while not _answers(url):
                assert proc.poll() is None, (tmp_path / f"ui-api-{i}.log").read_text()
                assert time.monotonic() < deadline, f"ui-api-{i} did not start"
                time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _session_id(resp: httpx.Response) -> str:
    header = next(v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    return header.partition(";")[0].split("=", 1)[1]


async def test_two_ui_api_replicas_share_sessions_failed_logins_and_the_config(infra, nats, tmp_path):
    clear_failed_auth(infra.redis_url)
    with ui_api_replicas(tmp_path, nats.url, infra.redis_url) as (first, second):
        async with httpx.AsyncClient(base_url=first, timeout=30) as a, \
                httpx.AsyncClient(base_url=second, timeout=30) as b:
            # a login at one is a session at the other
            login = await a.post("/api/login", json={"token": ADMIN_TOKEN}, headers=CSRF)
            assert login.status_code == 200, login.text
            cookie = {"cookie": f"{SESSION_COOKIE}={_session_id(login)}"}
            a.cookies.clear()
            session = await b.get("/api/session", headers=cookie)
            assert session.status_code == 200 and session.json()["via"] == "session"
            # logged out at the other: refused at the first
            assert (await b.post("/api/logout", headers={**cookie, **CSRF})).status_code == 200
            assert (await a.get("/api/session", headers=cookie)).status_code == 401

            # a config saved through one is the config the other serves
            admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            before = (await a.get("/api/config", headers=admin)).json()
            assert (await b.get("/api/config", headers=admin)).json()["etag"] == before["etag"]
            saved = await a.put("/api/config", json={"yaml": SEED.replace("100", "77")},
                                headers={**admin, "if-match": f'"{before["etag"]}"'})
            assert saved.status_code == 200, saved.text
            seen = (await b.get("/api/config", headers=admin)).json()
            assert seen["etag"] == saved.json()["etag"] and "batch_size: 77" in seen["yaml"]
            # an edit at the other based on what it read before is refused, not written over the first
            stale = await b.put("/api/config", json={"yaml": SEED.replace("100", "55")},
                                headers={**admin, "if-match": f'"{before["etag"]}"'})
            assert stale.status_code == 409

            # failed logins count across both (in Redis): the allowance spent at one, the other's first failure
            # from that address is refused as blocked, and from then on it refuses the address outright
            for _ in range(FAILURES_ALLOWED):
                assert (await a.post("/api/login", json={"token": "w" * 40}, headers=CSRF)).status_code == 401
            assert (await b.post("/api/login", json={"token": "w" * 40}, headers=CSRF)).status_code == 429
            assert (await b.post("/api/login", json={"token": ADMIN_TOKEN}, headers=CSRF)).status_code == 429
    clear_failed_auth(infra.redis_url)
