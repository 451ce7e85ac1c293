"""What the gateway says when it refuses, through the whole stack with gateway keys and the official SDKs:
a key's own limit named in words with a bounded Retry-After, a key with a budget that cannot spend past it
on the pass-through route, and requests refused before routing recorded in the request log and the
history (a flood of them as a bounded number of events whose counts add up).

This module's stack runs its own NATS (the runner's): keys live in a NATS key-value bucket, and a key in the
session's shared NATS would lock every other test's gateway.
"""

from __future__ import annotations

import os
import time

import httpx
import openai
import pytest

from admin import admin_headers
from fakes import FakeProvider
from llmgw_cli.main import main as cli_main
from llmgw_common.keys import key_id_of
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["m"]) as up:
        yield up


@pytest.fixture(scope="module")
def stack(infra, upstream, tmp_path_factory):
    config = f"""
version: 1
providers:
  - id: p
    base_url: {upstream.url}
    models:
      - name: m
        price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
routing:
  retry: {{attempts: 0}}
edge:
  max_body_bytes: 65536
usage:
  batch_wait_s: 0.1
"""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
    with running_stack(tmp_path_factory.mktemp("refusals"), config, env) as s:
        yield s


def _create_key(stack, capsys, name: str, *limits: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli_main(["keys", "--nats-url", stack.nats.url, "create", "--name", name, *limits])
    secret = capsys.readouterr().out.strip()
    assert done.value.code == 0 and secret
    return secret


def _client(stack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=secret, max_retries=0)


def _until_accepted(client: openai.OpenAI) -> None:
    """A new key reaches the edge's and the router's mirrors within moments: wait for the first 200."""
    for _ in range(100):
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            return
        except (openai.AuthenticationError, openai.RateLimitError):
            time.sleep(0.05)
    raise AssertionError("the new key was not accepted")


def test_a_keys_own_limit_is_named_with_a_bounded_retry_after(stack, capsys):
    client = _client(stack, _create_key(stack, capsys, "ci", "--rpm", "2"))
    _until_accepted(client)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    message = refused.value.body["message"]
    assert message.startswith("key 'ci' is at its limit of 2 requests per minute; retry after "), message
    wait = int(refused.value.response.headers["retry-after"])
    # a request counts for its whole 5-s bucket: it leaves the minute 60..65 s after it was admitted
    assert 1 <= wait <= 65 and message.endswith(f"retry after {wait} s")


def test_a_spent_budget_cannot_be_passed_on_the_pass_through_route(stack, capsys, upstream):
    secret = _create_key(stack, capsys, "broke", "--budget", "0.05/month")
    client = _client(stack, secret)
    _until_accepted(client)
    for _ in range(30):  # each request costs about a cent: the budget is spent within a few
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        except openai.RateLimitError as exc:
            assert "key 'broke' would pass its budget of $0.05 per month" in exc.body["message"]
            break
    else:
        raise AssertionError("the budget was never spent")
    base = f"http://127.0.0.1:{stack.edge_port}"
    headers = {"authorization": f"Bearer {secret}"}
    body = {"messages": [{"role": "user", "content": "free ride?"}], "max_tokens": 1}
    sent_before = len(upstream.requests)
    # a model the config lists is admitted like any other: refused
    listed = httpx.post(f"{base}/p/v1/chat/completions", json={**body, "model": "m"}, headers=headers)
    assert listed.status_code == 429, listed.text
    # one it does not list has no price and no window: refused too, saying why, and nothing reaches the provider
    unlisted = httpx.post(f"{base}/p/v1/chat/completions", json={**body, "model": "m-unlisted"}, headers=headers)
    assert unlisted.status_code == 403, unlisted.text
    error = unlisted.json()["error"]
    assert error["code"] == "unmetered_request" and "`m-unlisted`" in error["message"]
    no_model = httpx.post(f"{base}/p/v1/audio/speech", json={"input": "x"}, headers=headers)
    assert no_model.status_code == 403
    assert len(upstream.requests) == sent_before
    # reading is free: the provider's model list still answers
    assert httpx.get(f"{base}/p/v1/models", headers=headers).status_code == 200


def _log(stack, **params) -> list[dict]:
    """Every request log row matching ``params`` (all pages)."""
    rows: list[dict] = []
    cursor = None
    while True:
        page = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/requests", headers=admin_headers(stack), timeout=30,
                         params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        rows += page["rows"]
        cursor = page.get("next_cursor")
        if not cursor:
            return rows


def test_requests_refused_before_routing_are_in_the_request_log(stack, capsys, upstream):
    secret = _create_key(stack, capsys, "careless")
    key_id = key_id_of(secret)
    client = _client(stack, secret)
    _until_accepted(client)
    base = f"http://127.0.0.1:{stack.edge_port}"
    headers = {"authorization": f"Bearer {secret}"}
    refused = {
        400: httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": [{"role": {}}]},
                        headers=headers),
        404: httpx.post(f"{base}/v1/chat/completions", json={"model": "nope", "messages": [
            {"role": "user", "content": "x"}]}, headers=headers),
        413: httpx.post(f"{base}/v1/chat/completions", content=b"x" * 100_000,
                        headers={**headers, "content-type": "application/json"}),
    }
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope-either", messages=[{"role": "user", "content": "x"}])
    for status, r in refused.items():
        assert r.status_code == status, r.text
        rows = wait_for(lambda r=r: _log(stack, request_id=r.headers["x-request-id"]), timeout=20)
        (row,) = rows
        assert (row["status"], row["key_id"], row["provider"], row["cost_usd"], row["tokens_in"]) == (
            status, key_id, "", "0", 0)
        assert row["error"] and row["requests"] == 1 and row["route_reason"] == "refused before routing"
    assert wait_for(lambda: _log(stack, key_id=key_id, status=404, model="nope"), timeout=20)[0]["model"] == "nope"
    # the routes served by FastAPI record theirs too: count_tokens, the pass-through
    counted = httpx.post(f"{base}/v1/messages/count_tokens", json={"model": "m", "messages": 5}, headers=headers)
    unknown = httpx.post(f"{base}/nobody/v1/chat/completions", json={"model": "m"}, headers=headers)
    for r, status, endpoint in ((counted, 400, "messages.count_tokens"), (unknown, 404, "passthrough")):
        assert r.status_code == status, r.text
        (row,) = wait_for(lambda r=r: _log(stack, request_id=r.headers["x-request-id"]), timeout=20)
        assert (row["status"], row["endpoint"], row["key_id"]) == (status, endpoint, key_id)
    # no key at all: recorded without one
    anonymous = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": []})
    assert anonymous.status_code == 401
    (row,) = wait_for(lambda: _log(stack, request_id=anonymous.headers["x-request-id"]), timeout=20)
    assert row["key_id"] == "" and row["status"] == 401
    # never billed, never counted against a limit: the key's live windows saw only its one good request
    current = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/usage/current", headers=admin_headers(stack)).json()
    (scope,) = [s for s in current["scopes"] if s["scope"] == "key" and s["provider"] == key_id]
    assert scope["windows"]["minute"]["requests"] == 1


def test_a_flood_of_bad_requests_is_a_bounded_number_of_events_whose_counts_add_up(stack, capsys):
    secret = _create_key(stack, capsys, "flood")
    key_id = key_id_of(secret)
    _until_accepted(_client(stack, secret))
    flood, started = 2000, time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.edge_port}", timeout=30,
                      headers={"authorization": f"Bearer {secret}", "content-type": "application/json"}) as edge:
        statuses = {edge.post("/v1/chat/completions", content=b"{").status_code for _ in range(flood)}
    seconds = time.monotonic() - started
    assert statuses == {400}

    def all_counted():
        rows = _log(stack, key_id=key_id, status=400)
        return rows if sum(r["requests"] for r in rows) >= flood else None

    rows = wait_for(all_counted, timeout=30)
    assert sum(r["requests"] for r in rows) == flood
    # at most 20 events one by one per second, and one that sums the rest (one edge replica, one status)
    assert len(rows) <= 21 * (int(seconds) + 2) < flood / 4
    # the history counts every request and every error
    history = httpx.get(f"http://127.0.0.1:{stack.ui_port}/api/usage/history", headers=admin_headers(stack),
                        params={"key_id": key_id, "bucket_s": 3600}).json()["rows"]
    assert sum(r["errors"] for r in history) == flood + 0 and sum(r["requests"] for r in history) == flood + 1
