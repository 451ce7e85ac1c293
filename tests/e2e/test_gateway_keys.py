"""Gateway API keys: the key store, the edge's checks in both formats, revocation across edge replicas,
brute-force limits, and refusing to listen beyond loopback without keys.

This module's stack runs its own NATS (the runner's): keys live in a NATS key-value bucket, and a key
in the session's shared NATS would lock every other test's gateway.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import anthropic
import httpx
import openai
import pytest

from admin import admin_headers
from fakes import FakeProvider
from llmgw_cli.infra import NatsServer, free_port
from llmgw_cli.main import main as cli_main
from llmgw_common.keys import (KeyLimits, KeyRecord, KeyStore, display_prefix, key_id_of, new_key_id, new_secret,
                               parse_budget, secret_hash)
from llmgw_common.nats_conn import connect_nats
from llmgw_common.brute_force import FAILURES_ALLOWED, KEY_REALM, FailureLimiter, SharedFailureLimiter, failures_key
from llmgw_common.redis_conn import connect_redis
from llmgw_edge.auth import KeyCache, presented_key
from llmgw_edge.core.errors import GatewayError
from llmgw_edge.main import EdgeSettings, create_app as create_edge
from stacks import clear_failed_auth, files_under, running_stack, wait_for

pytestmark = pytest.mark.integration


# ---- pure -------------------------------------------------------------------------------------

def test_secrets_are_recognisable_high_entropy_and_stored_hashed():
    key_id = new_key_id()
    secret = new_secret(key_id)
    assert secret.startswith("llmgw-") and key_id_of(secret) == key_id and len(secret) >= 60
    assert new_secret(key_id) != secret and secret_hash(secret) != secret and len(secret_hash(secret)) == 64
    shown = display_prefix(secret)
    assert shown.endswith("…") and secret.startswith(shown[:-1]) and len(shown) - 1 <= len(secret) - 40
    assert key_id_of("sk-something") is None and key_id_of(secret + "x") is None


def test_where_each_client_puts_its_key():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "abc"}) == "abc"
    assert presented_key({"api-key": "abc"}) == "abc"
    assert presented_key({"x-goog-api-key": "abc"}) == "abc"
    assert presented_key({"authorization": "Basic xyz"}) is None and presented_key({}) is None


def test_failed_checks_are_limited_per_address():
    limiter = FailureLimiter(allowed=3, window_s=60)
    for i in range(3):
        assert limiter.blocked_for("1.2.3.4", now=100 + i) == 0
        limiter.failed("1.2.3.4", now=100 + i)
    assert limiter.blocked_for("1.2.3.4", now=103) == pytest.approx(57)
    assert limiter.blocked_for("5.6.7.8", now=103) == 0  # another address is not affected
    assert limiter.blocked_for("1.2.3.4", now=161) == 0  # the window slid past the first failure


def test_budgets_models_and_expiry():
    assert parse_budget("50/month") == {"cost_per_month": 50}
    with pytest.raises(ValueError):
        parse_budget("fifty a month")
    now = datetime.now(timezone.utc)
    record = KeyRecord(id=new_key_id(), name="t", hash="0" * 64, prefix="llmgw-…", created_at=now,
                       models=["gpt-*", "claude-*"], expires_at=now + timedelta(days=1))
    assert record.allows_model("gpt-4o") and record.allows_model("claude-3") and not record.allows_model("llama")
    assert record.usable() and not record.usable(now + timedelta(days=2))


async def test_the_edge_cache_follows_the_store_within_a_second(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    nc = await connect_nats(server.url, "test-keys")
    try:
        cache = KeyCache()
        await cache.start(nc.jetstream())
        assert not cache.enforcing and await cache.authenticate({}, "a") is None  # no keys: open
        store = await KeyStore.open(nc.jetstream())
        record, secret = await store.create("team-a", limits=KeyLimits(requests_per_minute=5))
        await _until(lambda: cache.enforcing, 1.0)
        assert (await cache.authenticate({"authorization": f"Bearer {secret}"}, "a")).id == record.id
        with pytest.raises(GatewayError) as err:
            await cache.authenticate({}, "a")
        assert err.value.status == 401
        _, rotated = await store.rotate(record.id)
        await _until(lambda: cache.records[record.id].hash == secret_hash(rotated), 1.0)
        with pytest.raises(GatewayError):
            await cache.authenticate({"x-api-key": secret}, "b")  # the old secret no longer works
        await store.revoke(record.id)
        await _until(lambda: cache.records[record.id].revoked_at is not None, 1.0)
        with pytest.raises(GatewayError):
            await cache.authenticate({"x-api-key": rotated}, "c")
        assert cache.enforcing  # a revoked key still means keys are required
        assert [r.id for r in await store.list()] == [record.id]
        await cache.stop()
    finally:
        await nc.close()
        server.stop()


async def test_failed_checks_are_counted_across_edge_replicas(infra, tmp_path):
    """Two edges on one Redis: bad keys from one address, alternating between them, are refused as blocked
    from the 21st failure on (not the 41st); a good key from another address passes on both."""
    server = NatsServer(tmp_path / "nats").start()  # its own: a key here would lock the session's gateways
    guesser, other = "198.51.100.7", "198.51.100.8"
    redis = connect_redis(infra.redis_url)
    await redis.delete(failures_key(KEY_REALM, guesser), failures_key(KEY_REALM, other))
    nc = await connect_nats(server.url, "test-keys")
    try:
        _, secret = await (await KeyStore.open(nc.jetstream())).create("team-a")
        edges = [create_edge(EdgeSettings(NATS_URL=server.url, REDIS_URL=infra.redis_url,
                                          LLMGW_CONFIG=str(tmp_path / "none.yaml"),
                                          LLMGW_STATE_DIR=str(tmp_path / f"state-{i}"))) for i in range(2)]
        async with edges[0].router.lifespan_context(edges[0]), edges[1].router.lifespan_context(edges[1]):
            def sdk(edge, address: str, api_key: str) -> openai.AsyncOpenAI:
                transport = httpx.ASGITransport(app=edge, client=(address, 40000))
                return openai.AsyncOpenAI(base_url="http://edge/v1", api_key=api_key, max_retries=0,
                                          http_client=httpx.AsyncClient(transport=transport, timeout=30))

            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            for i in range(FAILURES_ALLOWED):
                with pytest.raises(openai.AuthenticationError):
                    await sdk(edges[i % 2], guesser, f"llmgw-guess-{i}").chat.completions.create(**chat)
            for edge in edges:  # the 21st failure, on either edge: blocked, with the window's end to wait for
                with pytest.raises(openai.RateLimitError) as blocked:
                    await sdk(edge, guesser, "llmgw-guess-more").chat.completions.create(**chat)
                assert blocked.value.code == "too_many_failed_auth"
                assert 1 <= int(blocked.value.response.headers["retry-after"]) <= 60
            # blocked means not even checked: the good key from the guessing address is refused too
            with pytest.raises(openai.RateLimitError):
                await sdk(edges[0], guesser, secret).models.list()
            for edge in edges:  # another address is not affected
                assert [m async for m in await sdk(edge, other, secret).models.list()] == []
    finally:
        await redis.delete(failures_key(KEY_REALM, guesser))
        await redis.aclose()
        await nc.close()
        server.stop()


async def test_without_redis_failures_are_counted_in_the_process():
    """Redis unreachable: neither everyone locked out nor guessing unbounded (a local count per replica)."""
    redis = connect_redis(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    limiter = SharedFailureLimiter(KEY_REALM, redis, allowed=3)
    try:
        for _ in range(3):
            assert limiter.blocked_for("a") == 0
            assert await limiter.failed("a") == 0
        assert limiter.blocked_for("a") > 0 and limiter.blocked_for("b") == 0
    finally:
        await redis.aclose()


async def _until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not seen in time"
        await asyncio.sleep(0.02)


# ---- through the whole stack ------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m", "other"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models: [{{name: m}}, {{name: other}}]
  - id: a
    type: anthropic
    base_url: {upstream.origin}
    models: [{{name: claude-m, upstream: m}}]
usage:
  batch_wait_s: 0.1
"""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    root = tmp_path_factory.mktemp("keys")
    with running_stack(root, config, env) as s:
        s.root = root
        yield s


def _keys(stack, *args: str, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli_main(["keys", "--nats-url", stack.nats.url, *args])
    out = capsys.readouterr()
    return done.value.code, out.out.strip(), out.err


def _edge(stack) -> str:
    return f"http://127.0.0.1:{stack.edge_port}"


def test_keys_end_to_end(stack, capsys, upstream):
    base = _edge(stack)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(base + "/v1/chat/completions", json=chat).status_code == 200  # no keys yet: open

    code, secret, err = _keys(stack, "create", "--name", "team-a", "--models", "m,claude-*", "--budget", "50/month",
                              "--rpm", "60", capsys=capsys)
    assert code == 0 and key_id_of(secret) and "team-a" in err and secret not in err
    key_id = key_id_of(secret)
    code, listed, _ = _keys(stack, "list", capsys=capsys)
    assert key_id in listed and secret not in listed and "cost_per_month" in listed

    # within a second the edge requires it, in each client's format
    wait_for(lambda: httpx.post(base + "/v1/chat/completions", json=chat).status_code == 401, timeout=2,
             interval=0.05)
    oai = openai.OpenAI(base_url=base + "/v1", api_key="llmgw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        oai.chat.completions.create(**chat)
    assert denied.value.body["code"] == "invalid_api_key" and denied.value.response.headers["x-request-id"]
    claude = anthropic.Anthropic(base_url=base, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied_anthropic:
        claude.messages.create(model="claude-m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert denied_anthropic.value.body["error"]["type"] == "authentication_error"
    assert upstream.requests[-1]["body"]["messages"][0]["content"] == "hi"  # nothing reached the upstream

    # the right key, wherever the client puts it
    good = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
    raw = good.chat.completions.with_raw_response.create(**chat)
    assert raw.http_response.status_code == 200
    assert anthropic.Anthropic(base_url=base, api_key=secret, max_retries=0).messages.create(
        model="claude-m", max_tokens=5, messages=[{"role": "user", "content": "x"}]).content
    for header in ("x-api-key", "api-key", "x-goog-api-key"):
        assert httpx.post(base + "/v1/chat/completions", json=chat, headers={header: secret}).status_code == 200
    assert all(secret not in value for value in upstream.requests[-1]["headers"].values())  # never forwarded

    # a model the key may not use: 403; the model list shows only what it may use
    with pytest.raises(openai.PermissionDeniedError):
        good.chat.completions.create(model="other", messages=chat["messages"])
    assert {m.id for m in good.models.list()} == {"m", "claude-m"}

    # usage is recorded under the key
    def logged():
        r = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/requests",
                      params={"request_id": raw.headers["x-request-id"]}, headers=admin_headers(stack))
        rows = r.json().get("rows") or []
        return rows[0] if rows else None

    assert wait_for(logged, timeout=20)["key_id"] == key_id

    # revoked: refused within a second, by a second edge replica too
    second_port = free_port()
    env = dict(os.environ, NATS_URL=stack.nats.url, REDIS_URL=stack.base_env["REDIS_URL"],
               LLMGW_CONFIG=str(stack.config_path), LLMGW_STATE_DIR=str(stack.state_dir),
               LLMGW_EDGE_PORT=str(second_port), LLMGW_EDGE_HOST="127.0.0.1")
    second = subprocess.Popen([sys.executable, "-m", "llmgw_cli.main", "edge"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        second_base = f"http://127.0.0.1:{second_port}"
        wait_for(lambda: _ok(second_base + "/healthz"), timeout=30)
        assert httpx.post(second_base + "/v1/chat/completions", json=chat,
                          headers={"authorization": f"Bearer {secret}"}).status_code == 200
        code, _, _ = _keys(stack, "revoke", key_id, capsys=capsys)
        assert code == 0
        revoked_at = time.monotonic()
        for b in (base, second_base):
            wait_for(lambda b=b: httpx.post(b + "/v1/chat/completions", json=chat,
                                            headers={"authorization": f"Bearer {secret}"}).status_code == 401,
                     timeout=2, interval=0.05)
        assert time.monotonic() - revoked_at < 2
    finally:
        second.terminate()
        second.wait(10)

    # guessing is slow: after enough failures from one address, 429 with Retry-After
    statuses = [httpx.post(base + "/v1/chat/completions", json=chat,
                           headers={"authorization": f"Bearer llmgw-guess-{i}"}).status_code for i in range(30)]
    assert statuses.count(429) >= 5 and set(statuses) <= {401, 429}
    limited = httpx.post(base + "/v1/chat/completions", json=chat, headers={"authorization": "Bearer x"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    clear_failed_auth(stack.base_env["REDIS_URL"])  # 127.0.0.1 is every test's address

    # the secret never shows up in anything the stack wrote
    for path in files_under(stack.root):
        if path.suffix in (".log", ".ndjson", ".json", ".yaml"):
            try:
                assert secret not in path.read_text(errors="replace"), path
            except FileNotFoundError:  # a temporary file of the running stack, gone meanwhile
                pass


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_edge_refuses_to_listen_beyond_loopback_without_keys(tmp_path, infra):
    server = NatsServer(tmp_path / "nats").start()
    try:
        config = tmp_path / "llmgw.yaml"
        config.write_text("version: 1\n")
        env = dict(os.environ, NATS_URL=server.url, REDIS_URL=infra.redis_url, LLMGW_CONFIG=str(config),
                   LLMGW_STATE_DIR=str(tmp_path / "state"), LLMGW_EDGE_PORT=str(free_port()),
                   LLMGW_EDGE_HOST="0.0.0.0")
        done = subprocess.run([sys.executable, "-m", "llmgw_cli.main", "edge"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0
        assert "no gateway API key exists" in done.stdout + done.stderr and "llmgw keys create" in \
            done.stdout + done.stderr
    finally:
        server.stop()
