"""The config editor API through a running stack: read (secrets masked), validate (problems at field
paths, a diff), save with If-Match (atomic rewrite, mode kept, the old file in the history, every service
reloads: a model added in the YAML is served without a restart), refusals that change nothing (invalid,
stale etag, no If-Match), secrets that survive a save of the masked text, rollback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from admin import admin_client
from fakes import FakeProvider
from llmgw_common import subjects
from llmgw_common.admin_auth import ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV
from llmgw_common.nats_conn import connect_nats
from llmgw_ui_api.config_secrets import mask_text, restore_secrets
from llmgw_ui_api.config_store import HISTORY_DIR
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

SECRETS = ("sk-literal-secret-123", "org-secret-456", "sk-commented-old-789", "prices-pw-0")


def _config(url: str) -> str:
    return f"""# the gateway's config (comments survive the editor)
version: 1
providers:
  - id: p
    base_url: {url}
    api_key: sk-literal-secret-123   # the live one
    # api_key: sk-commented-old-789
    headers:
      X-Org: org-secret-456
    models:
      - name: m
        limits: {{requests_per_minute: 600}}
  - id: q
    base_url: {url}
    api_key: ${{LLMGW_TEST_Q_KEY}}
    models: [{{name: other}}]
usage:
  batch_wait_s: 0.1
pricing:
  source_url: https://user:prices-pw-0@127.0.0.1:9/prices.json
  fetch_on_start: false
"""


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m", "other", "added"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    """Its own NATS (the runner's): the config announcements reach this stack alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV)}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    root = tmp_path_factory.mktemp("config-editor")
    with running_stack(root, _config(upstream.url), env) as s:
        yield s


def _chat(stack, model: str) -> int:
    return httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code


def _no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Announcements:
    """``llmgw.config.changed`` as the services see it, collected in a background loop."""

    def __init__(self, nats_url: str):
        self.nats_url = nats_url
        self.bodies: list[dict] = []

    async def __aenter__(self):
        self.nc = await connect_nats(self.nats_url, "test-config-announcements")

        async def seen(msg) -> None:
            self.bodies.append(json.loads(msg.data))

        await self.nc.subscribe(subjects.CONFIG_CHANGED, cb=seen)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc):
        await self.nc.close()


def test_masking_round_trip_keeps_every_secret_and_comment():
    text = _config("http://127.0.0.1:1/v1")
    shown = mask_text(text)
    _no_secrets(shown)
    assert '"********"' in shown and "${LLMGW_TEST_Q_KEY}" in shown and "# the live one" in shown
    assert restore_secrets(shown, text).text == text
    # a mask where the running config has no secret is a problem at its path, never a literal "********"
    added = shown.replace("    models: [{name: other}]", '    models: [{name: other}]\n  - id: r\n    api_key: '
                                                           '"********"\n    models: [{name: x}]')
    assert restore_secrets(added, text).problems[0][0] == "providers[2].api_key"


@pytest.mark.parametrize("text", [
    # another block layout (dashes flush with their key) stays as written
    "providers:\n- id: a\n  api_key: 'sk-quoted-secret-1'\n  models: [{name: m}, {name: n, upstream: x}]\n",
    # one secret shared through an anchor, and one merged in from another provider's mapping
    "providers:\n  - &base\n    id: a\n    api_key: &k sk-anchored-secret-2\n    headers: {X-A: sk-header-secret-3}\n"
    "    models: [{name: m}]\n  - <<: *base\n    id: b\n    models: [{name: n}]\n  - id: c\n    api_key: *k\n"
    "    models: [{name: o}]\n",
])
def test_masking_keeps_the_layout_and_follows_anchors_and_merges(text):
    shown = mask_text(text)
    assert "secret" not in shown and '"********"' in shown
    assert restore_secrets(shown, text).text == text  # saved unchanged: the file byte for byte

async def test_read_validate_save_reload_and_rollback(stack, upstream):
    path: Path = stack.config_path
    os.chmod(path, 0o640)
    original = path.read_bytes()
    async with Announcements(stack.nats.url) as announced:
        with admin_client(stack, timeout=30) as ui:
            # ---- read
            resp = ui.get("/api/config")
            assert resp.status_code == 200
            _no_secrets(resp.text)
            view = resp.json()
            assert view["etag"] == _etag(path) and view["path"] == str(path) and view["problems"] == []
            assert view["masked"]["providers"][0]["api_key"] == "********"
            assert view["masked"]["providers"][1]["api_key"] == "${LLMGW_TEST_Q_KEY}"
            # the mask quoted (a plain * would start a YAML alias), the comment kept on its line and column
            assert '    api_key: "********"              # the live one\n' in view["yaml"]
            assert "X-Org: \"********\"" in view["yaml"] and "${LLMGW_TEST_Q_KEY}" in view["yaml"]
            with admin_client(stack, role="readonly") as viewer:
                assert viewer.get("/api/config").json()["yaml"] == view["yaml"]
                assert viewer.put("/api/config", json={"yaml": view["yaml"]},
                                  headers={"if-match": view["etag"]}).status_code == 403

            # ---- validate: problems at field paths, a masked diff, nothing written
            edited = view["yaml"].replace("        limits: {requests_per_minute: 600}\n",
                                          "        limits: {requests_per_minute: 600}\n      - name: added\n")
            bad = edited.replace("  - id: q\n    base_url: ", "  - id: q\n    base_url: ftp:")
            resp = ui.post("/api/config/validate", json={"yaml": bad})
            assert resp.status_code == 200
            report = resp.json()
            assert report["ok"] is False
            assert [p["path"] for p in report["problems"]] == ["providers[1].base_url"]
            resp = ui.post("/api/config/validate", json={"yaml": "version: 1\nproviders: [\n"})
            assert resp.json()["ok"] is False and resp.json()["problems"][0]["path"].startswith("line ")
            resp = ui.post("/api/config/validate", json={"yaml": edited})
            assert resp.json()["ok"] is True and resp.json()["problems"] == []
            assert "+      - name: added\n" in resp.json()["diff"] and resp.json()["diff"].startswith("--- running")
            _no_secrets(resp.text)
            assert path.read_bytes() == original

            # ---- refusals change nothing
            resp = ui.put("/api/config", json={"yaml": edited})
            assert resp.status_code == 428 and resp.json()["error"]["message"]
            resp = ui.put("/api/config", json={"yaml": bad}, headers={"if-match": view["etag"]})
            assert resp.status_code == 400
            assert resp.json()["error"]["code"] == "invalid_config"
            assert resp.json()["problems"][0]["path"] == "providers[1].base_url"
            resp = ui.put("/api/config", json={"yaml": "providers: [{"}, headers={"if-match": view["etag"]})
            assert resp.status_code == 400 and resp.json()["problems"]
            resp = ui.put("/api/config", json={"yaml": edited}, headers={"if-match": "0" * 64})
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "conflict"
            assert path.read_bytes() == original and not (stack.state_dir / HISTORY_DIR).exists()
            assert await asyncio.to_thread(_chat, stack, "added") == 404

            # ---- save: atomic rewrite, mode kept, secrets kept, the old file in the history, live reload
            before = os.stat(path)
            resp = ui.put("/api/config", json={"yaml": edited}, headers={"if-match": f'"{view["etag"]}"'})
            assert resp.status_code == 200, resp.text
            saved = resp.json()
            assert saved["changed"] is True and saved["etag"] == _etag(path) and saved["version"].endswith(
                saved["etag"][:8])
            after = os.stat(path)
            assert after.st_ino != before.st_ino  # a new file renamed over the old one
            assert stat.S_IMODE(after.st_mode) == 0o640
            on_disk = path.read_text()
            for secret in SECRETS:
                assert secret in on_disk  # the "********" of the editor kept every secret
            assert on_disk == original.decode().replace(
                "        limits: {requests_per_minute: 600}\n",
                "        limits: {requests_per_minute: 600}\n      - name: added\n")
            assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
            kept = list((stack.state_dir / HISTORY_DIR).iterdir())
            assert len(kept) == 1 and kept[0].read_bytes() == original
            assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600

            await asyncio.to_thread(wait_for, lambda: _chat(stack, "added") == 200, 20, 0.2)
            assert upstream.requests[-1]["body"]["model"] == "added"
            for _ in range(100):
                if announced.bodies:
                    break
                await asyncio.sleep(0.05)
            # the typed announcement (llmgw_common.messages.ConfigChanged) every service decodes
            assert announced.bodies[-1] == {"schema_version": 1, "etag": saved["etag"], "version": saved["version"]}

            # ---- the same text again: nothing to write
            resp = ui.put("/api/config", json={"yaml": ui.get("/api/config").json()["yaml"]},
                          headers={"if-match": saved["etag"]})
            assert resp.json() == {**saved, "changed": False}
            assert len(list((stack.state_dir / HISTORY_DIR).iterdir())) == 1

            # ---- history and rollback
            history = ui.get("/api/config/history").json()
            _no_secrets(json.dumps(history))
            assert history["current"]["etag"] == saved["etag"] and history["current"]["version"] == saved["version"]
            (old,) = history["versions"]
            assert old["etag"] == hashlib.sha256(original).hexdigest() and old["size"] == len(original)
            resp = ui.post("/api/config/rollback", json={"version": old["version"]})
            assert resp.status_code == 428
            resp = ui.post("/api/config/rollback", json={"version": old["version"]}, headers={"if-match": view["etag"]})
            assert resp.status_code == 409  # the etag of the file as it was, not as it is
            resp = ui.post("/api/config/rollback", json={"version": "20200101T000000.000000Z-00000000"},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 404
            resp = ui.post("/api/config/rollback", json={"version": "../../etc/passwd"},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 400
            resp = ui.post("/api/config/rollback", json={"version": old["version"]},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 200 and resp.json()["changed"] is True
            assert path.read_bytes() == original and stat.S_IMODE(os.stat(path).st_mode) == 0o640
            await asyncio.to_thread(wait_for, lambda: _chat(stack, "added") == 404, 20, 0.2)
            versions = ui.get("/api/config/history").json()["versions"]
            assert [v["etag"] for v in versions] == [saved["etag"], old["etag"]]  # newest first
            assert versions[0]["version"] == saved["version"]


def test_a_broken_file_is_shown_masked_and_can_be_fixed(stack):
    path: Path = stack.config_path
    good = path.read_bytes()
    try:
        path.write_text(good.decode() + "  oops: [\n")  # a hand edit gone wrong
        with admin_client(stack, timeout=30) as ui:
            view = ui.get("/api/config").json()
            _no_secrets(json.dumps(view))
            assert view["masked"] is None and view["problems"] and view["yaml"].endswith("  oops: [\n")
            # the masks cannot be put back from a file that does not parse: the secret must be typed
            resp = ui.put("/api/config", json={"yaml": view["yaml"].replace("  oops: [\n", "")},
                          headers={"if-match": view["etag"]})
            assert resp.status_code == 400 and {p["path"] for p in resp.json()["problems"]} >= {
                "providers[0].api_key", "providers[0].headers.X-Org"}
            fixed = good.decode()
            resp = ui.put("/api/config", json={"yaml": fixed}, headers={"if-match": view["etag"]})
            assert resp.status_code == 200 and path.read_bytes() == good
    finally:
        if path.read_bytes() != good:
            path.write_bytes(good)
