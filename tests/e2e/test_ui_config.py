"""The config editor API through a running stack: read (secrets masked), validate (problems at field
paths, a diff), save with If-Match (a new revision of the config bucket, the file untouched, every
service applies it: a model added in the YAML is served without a restart), refusals that change nothing
(invalid, stale etag, no If-Match, two editors from the same revision), secrets that survive a save of
the masked text, history and rollback from the bucket's revisions, whether every replica runs the
latest revision."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from admin import admin_client
from fakes import FakeProvider
from llmgw_common import subjects
from llmgw_common.admin_auth import ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV
from llmgw_common.nats_conn import connect_nats
from llmgw_ui_api.config_secrets import mask_text, restore_secrets
from stacks import push_config, running_stack, wait_for

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


async def _stored(nats_url: str) -> tuple[int, str]:
    """The config bucket's current revision and text."""
    from llmgw_common import config_bucket

    nc = await connect_nats(nats_url, "test-config-read")
    try:
        stored = await config_bucket.current(await config_bucket.open_bucket(nc.jetstream(), create=False))
        return stored.revision, stored.text
    finally:
        await nc.close()


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
    original = path.read_bytes()
    seeded, text = await _stored(stack.nats.url)
    assert text.encode() == original  # the file seeded the bucket
    async with Announcements(stack.nats.url) as announced:
        with admin_client(stack, timeout=30) as ui:
            # ---- read
            resp = ui.get("/api/config")
            assert resp.status_code == 200
            _no_secrets(resp.text)
            view = resp.json()
            assert view["etag"] == view["version"] == str(seeded) and view["problems"] == []
            assert view["path"] == "LLMGW_CONFIG/gateway.yaml"
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
            assert await _stored(stack.nats.url) == (seeded, original.decode())
            assert await asyncio.to_thread(_chat, stack, "added") == 404

            # ---- save: a new revision, secrets kept, the file untouched, live reload
            resp = ui.put("/api/config", json={"yaml": edited}, headers={"if-match": f'"{view["etag"]}"'})
            assert resp.status_code == 200, resp.text
            saved = resp.json()
            assert saved["changed"] is True and saved["etag"] == saved["version"] == str(seeded + 1)
            revision, stored = await _stored(stack.nats.url)
            assert revision == seeded + 1
            for secret in SECRETS:
                assert secret in stored  # the "********" of the editor kept every secret
            assert stored == original.decode().replace(
                "        limits: {requests_per_minute: 600}\n",
                "        limits: {requests_per_minute: 600}\n      - name: added\n")
            assert path.read_bytes() == original  # the file is the seed only
            # a second editor who started from the same revision gets a conflict, nothing changes
            resp = ui.put("/api/config", json={"yaml": view["yaml"] + "# mine\n"}, headers={"if-match": view["etag"]})
            assert resp.status_code == 409 and resp.headers["etag"] == f'"{saved["etag"]}"'
            assert (await _stored(stack.nats.url))[0] == revision

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
            assert (await _stored(stack.nats.url))[0] == revision

            # ---- history and rollback
            history = ui.get("/api/config/history").json()
            _no_secrets(json.dumps(history))
            assert history["current"]["etag"] == saved["etag"] and history["current"]["version"] == saved["version"]
            (old,) = history["versions"]
            assert old["version"] == old["etag"] == str(seeded) and old["size"] == len(original)
            resp = ui.post("/api/config/rollback", json={"version": old["version"]})
            assert resp.status_code == 428
            resp = ui.post("/api/config/rollback", json={"version": old["version"]}, headers={"if-match": view["etag"]})
            assert resp.status_code == 409  # the etag of the file as it was, not as it is
            resp = ui.post("/api/config/rollback", json={"version": "999999"},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 404
            resp = ui.post("/api/config/rollback", json={"version": "../../etc/passwd"},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 400
            resp = ui.post("/api/config/rollback", json={"version": old["version"]},
                           headers={"if-match": saved["etag"]})
            assert resp.status_code == 200 and resp.json()["changed"] is True
            assert resp.json()["version"] == str(revision + 1)  # a rollback is a new revision
            assert await _stored(stack.nats.url) == (revision + 1, original.decode())
            await asyncio.to_thread(wait_for, lambda: _chat(stack, "added") == 404, 20, 0.2)
            versions = ui.get("/api/config/history").json()["versions"]
            assert [v["etag"] for v in versions] == [saved["etag"], old["etag"]]  # newest first
            assert versions[0]["version"] == saved["version"]

            # ---- every process runs the latest revision (edge, router, usage, pricing, ui-api)
            def all_latest() -> bool:
                return ui.get("/api/config/replicas").json()["all_latest"]

            await asyncio.to_thread(wait_for, all_latest, 20, 0.2)
            replicas = ui.get("/api/config/replicas").json()
            assert replicas["latest"] == revision + 1
            assert {r["service"] for r in replicas["replicas"]} == {"edge", "router", "usage", "pricing", "ui-api"}


def test_a_broken_revision_is_shown_masked_and_can_be_fixed(stack):
    good = stack.config_path.read_text()
    # a revision written past the checks (the bucket edited by hand): shown, refused by every service
    broken = asyncio.run(push_config(stack.nats.url, good + "  oops: [\n"))
    try:
        with admin_client(stack, timeout=30) as ui:
            view = ui.get("/api/config").json()
            _no_secrets(json.dumps(view))
            assert view["masked"] is None and view["problems"] and view["yaml"].endswith("  oops: [\n")
            assert view["etag"] == str(broken)
            # the masks cannot be put back from a text that does not parse: the secret must be typed
            resp = ui.put("/api/config", json={"yaml": view["yaml"].replace("  oops: [\n", "")},
                          headers={"if-match": view["etag"]})
            assert resp.status_code == 400 and {p["path"] for p in resp.json()["problems"]} >= {
                "providers[0].api_key", "providers[0].headers.X-Org"}
            replicas = ui.get("/api/config/replicas").json()
            assert replicas["latest"] == broken and not replicas["all_latest"]  # they keep the last valid one
            resp = ui.put("/api/config", json={"yaml": good}, headers={"if-match": view["etag"]})
            assert resp.status_code == 200 and asyncio.run(_stored(stack.nats.url)) == (broken + 1, good)
    finally:
        if asyncio.run(_stored(stack.nats.url))[1] != good:
            asyncio.run(push_config(stack.nats.url, good))
