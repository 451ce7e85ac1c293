"""The web UI: served by ui-api at ``/`` without a credential (the page holds no data), its typed client's
OpenAPI snapshot current, and the whole UI in a real browser against a running gateway.

The browser suite (``services/ui-api/web/e2e/ui.e2e.mjs``: node, playwright-core, Debian's Chromium)
logs in, watches the overview while this test sends requests through the edge with the openai SDK,
pins a provider, adds a model in the config editor and calls it without a restart, submits an invalid
config, filters the request log, creates a key, and saves a screenshot of each page into
``test-artifacts/screenshots`` (``docs/screenshots``, which the README shows, with
``LLMGW_UPDATE_SCREENSHOTS=1``). It skips when node/npm or /usr/bin/chromium are missing (``.ci/run`` installs them), and fails
instead under CI (``CI=true``: tests/ci.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from admin import stack_token
from ci import missing
from fakes import FakeProvider
from llmgw_ui_api import web

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "services" / "ui-api" / "web"
STATIC = ROOT / "services" / "ui-api" / "llmgw_ui_api" / "static"
# the screenshots are this test's artifacts (test-artifacts/, not in git); LLMGW_UPDATE_SCREENSHOTS=1 writes
# them where the README shows them instead (docs/screenshots), to refresh those
SHOTS = ROOT / ("docs/screenshots" if os.environ.get("LLMGW_UPDATE_SCREENSHOTS") == "1" else
                "test-artifacts/screenshots")
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SOURCES = ("src", "public", "index.html", "package.json", "package-lock.json", "vite.config.ts", "svelte.config.js",
           "tsconfig.json", "openapi.json")


# ---- no browser ----------------------------------------------------------------------------------

def test_the_openapi_snapshot_is_current():
    """services/ui-api/web/openapi.json is what ui-api documents now (the UI's client types come from it)."""
    exporter = runpy.run_path(str(ROOT / "scripts" / "export_openapi.py"))
    current = (WEB / "openapi.json").read_text()
    assert current == exporter["document"](), "run: .venv/bin/python scripts/export_openapi.py"


def test_pages_and_assets_are_open_everything_else_is_not(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>ui</title>")
    (tmp_path / "assets" / "app-1a2b.js").write_text("console.log(1)")
    for path in ("/", "/overview", "/config", "/assets/app-1a2b.js", "/favicon.svg"):
        assert web.is_open(path), path
    for path in ("/api/keys", "/nope", "/openapi.json", "/assets/../api/keys", "/assets//x", "/overview/x", "/debug/router"):
        assert not web.is_open(path), path
    page = web.response_for("/requests", tmp_path)
    assert page is not None and page.headers["cache-control"] == "no-cache"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    asset = web.response_for("/assets/app-1a2b.js", tmp_path)
    assert asset is not None and "immutable" in asset.headers["cache-control"]
    assert web.response_for("/assets/missing.js", tmp_path) is None  # -> the JSON 404
    assert web.response_for("/api/keys", tmp_path) is None
    # not built: the page says how to build it
    empty = tmp_path / "empty"
    empty.mkdir()
    hint = web.response_for("/", empty)
    assert hint is not None and b"npm ci" in hint.body and b"make web" in hint.body


# ---- the browser suite -----------------------------------------------------------------------------

def _newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        path = WEB / name
        files = path.rglob("*") if path.is_dir() else [path]
        newest = max([newest, *(f.stat().st_mtime for f in files if f.is_file())])
    return newest


def _build_ui() -> None:
    """npm ci when node_modules is missing or older than the lock file; a build when the built files are
    older than the sources (what `make web` does)."""
    lock = WEB / "node_modules" / ".package-lock.json"
    if not lock.exists() or lock.stat().st_mtime < (WEB / "package-lock.json").stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, timeout=300)
    index = STATIC / "index.html"
    if not index.exists() or index.stat().st_mtime < _newest_source():
        subprocess.run(["npm", "run", "build"], cwd=WEB, check=True, timeout=300)


def _config(alpha: FakeProvider, beta: FakeProvider) -> str:
    return f"""version: 1
# written by tests/e2e/test_web_ui.py
providers:
  - id: alpha
    base_url: {alpha.url}
    free_tier: true
    limits: {{requests_per_minute: 12, requests_per_hour: 300, tokens_per_day: 200000}}
    models:
      - name: m
        price: {{input_per_mtok: 0, output_per_mtok: 0}}
  - id: beta
    base_url: {beta.url}
    limits:
      requests_per_minute: 30
      cost_per_day: 0.02
    models:
      - name: m
        price: {{input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25}}
      # the web UI test adds a model here
usage:
  batch_wait_s: 0.1
"""


class Helper:
    """What the browser suite asks of Python: requests through the edge (openai SDK), the running config (the
    config bucket's current revision: the file is only its seed)."""

    def __init__(self, edge_url: str, nats_url: str):
        import openai

        self.client = openai.OpenAI(base_url=f"{edge_url}/v1", api_key="unused", max_retries=0, timeout=20)
        self.openai = openai
        self.nats_url = nats_url

    def send(self, model: str, n: int = 1, provider: str | None = None, key: str | None = None) -> dict:
        statuses, providers = [], []
        client = self.client if key is None else self.client.with_options(api_key=key)
        for _ in range(n):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=f"{provider}/{model}" if provider else model,
                    messages=[{"role": "user", "content": "hello from the web UI test"}], max_tokens=16)
                statuses.append(raw.http_response.status_code)
                providers.append(raw.headers.get("x-llmgw-provider"))
            except self.openai.APIStatusError as exc:
                statuses.append(exc.status_code)
                providers.append(None)
        return {"statuses": statuses, "providers": providers}

    def wait_model(self, model: str, timeout_s: float) -> dict:
        start = time.monotonic()
        while True:
            sent = self.send(model)
            if sent["statuses"][0] == 200 or time.monotonic() - start > timeout_s:
                return {"ok": sent["statuses"][0] == 200, "provider": sent["providers"][0],
                        "after_ms": round((time.monotonic() - start) * 1000)}
            time.sleep(0.2)

    def config_file(self) -> dict:
        from llmgw_common import config_bucket  # noqa: PLC0415
        from llmgw_common.nats_conn import connect_nats  # noqa: PLC0415

        async def running() -> config_bucket.Revision | None:
            nc = await connect_nats(self.nats_url, "test-web-ui-helper")
            try:
                return await config_bucket.current(await config_bucket.open_bucket(nc.jetstream(), create=False))
            finally:
                await nc.close()

        revision = asyncio.run(running())  # the helper's own thread: its own event loop
        assert revision is not None, "the stack's config bucket is empty"
        data = revision.text.encode()
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "revision": revision.revision}

    def serve(self) -> ThreadingHTTPServer:
        helper = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path == "/config-file":
                    self._answer(helper.config_file())
                else:
                    self._answer({"error": "no such path"}, 404)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                if self.path == "/send":
                    self._answer(helper.send(body["model"], int(body.get("n", 1)), body.get("provider"), body.get("key")))
                elif self.path == "/wait-model":
                    self._answer(helper.wait_model(body["model"], float(body.get("timeout_s", 10))))
                else:
                    self._answer({"error": "no such path"}, 404)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, name="web-ui-helper", daemon=True).start()
        return server


@pytest.mark.integration
def test_the_web_ui_in_a_browser(infra, tmp_path):
    if not (shutil.which("node") and shutil.which("npm")):
        missing("node and npm are needed to build and drive the web UI (.ci/run installs them)")
    if not CHROMIUM.exists():
        missing(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from stacks import running_stack  # noqa: PLC0415 (the stack helpers import the runner)

    started = time.monotonic()
    _build_ui()
    # beta reads 4 prompt tokens of each request from its cache: the overview's prompt caching table
    with FakeProvider(models=["m"]) as alpha, FakeProvider(models=["m", "brand-new"], cached_tokens=4) as beta:
        # its own NATS (the runner's): the key the suite creates must not lock other tests' gateways out
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "LLMGW_ADMIN_TOKEN", "LLMGW_ADMIN_READONLY_TOKEN")}
        env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
        from stacks import clear_router_health  # noqa: PLC0415

        clear_router_health(infra.redis_url)  # no pin or cooldown left by another test
        with running_stack(tmp_path, _config(alpha, beta), env) as stack:
            ui = f"http://127.0.0.1:{stack.ui_port}"
            page = httpx.get(ui + "/overview")  # the page itself needs no credential, the API does
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert httpx.get(ui + "/api/keys").status_code == 401
            helper = Helper(f"http://127.0.0.1:{stack.edge_port}", stack.nats.url)
            server = helper.serve()
            try:
                env = dict(os.environ, LLMGW_UI=ui, LLMGW_TOKEN=stack_token(stack),
                           LLMGW_READONLY_TOKEN=stack_token(stack, "readonly"),
                           LLMGW_HELPER=f"http://127.0.0.1:{server.server_address[1]}", LLMGW_SHOTS=str(SHOTS),
                           LLMGW_ARTIFACTS=str(tmp_path), CHROMIUM=str(CHROMIUM))
                run = subprocess.run(["node", "e2e/ui.e2e.mjs"], cwd=WEB, env=env, capture_output=True, text=True,
                                     timeout=150)
            finally:
                server.shutdown()
            print(run.stdout, run.stderr, sep="\n")
            assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
            assert "browser suite passed" in run.stdout
            clear_router_health(infra.redis_url)
    for name in ("overview.png", "providers.png", "config-editor.png", "request-log.png", "keys.png",
                 "overview-phone.png", "request-log-phone.png", "keys-phone.png"):
        assert (SHOTS / name).stat().st_mtime > time.time() - (time.monotonic() - started) - 5, name
    print(f"web UI test: {time.monotonic() - started:.1f}s")
