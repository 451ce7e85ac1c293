"""Prompt-cache affinity through the whole stack (real NATS, Redis, chDB; the official ``anthropic`` SDK):
two providers serve the model, the demo provider's Anthropic face and its OpenAI face, both simulating their
prompt caches (``Behaviour.prompt_cache``). Round-robin would alternate the turns of a conversation between
them; affinity keeps a 3-turn conversation with a cached system prompt on the provider that served its first
turn while cache reads make it the cheaper one, and the usage rows show the cache reads on turns 2 and 3.
When that provider reaches its limit, turn 4 moves to the other one and the route reason says why."""

from __future__ import annotations

import os

import anthropic
import pytest

from admin import admin_client
from fakes import FakeProvider
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

SYSTEM = [{"type": "text", "text": "You review pull requests line by line. " * 300,  # ~2,100 words
           "cache_control": {"type": "ephemeral"}}]


def _config(claude: FakeProvider, gpt: FakeProvider) -> str:
    return f"""
version: 1
providers:
  - id: p-claude
    type: anthropic
    base_url: {claude.origin}
    api_key: anthropic-key
    limits: {{requests_per_minute: 3}}
    models:
      - name: m
        upstream: up-model
        price: {{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}}
  - id: p-gpt
    type: openai
    base_url: {gpt.url}
    limits: {{requests_per_minute: 3}}
    models:
      - name: m
        upstream: up-model
        price: {{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 1.5}}
routing:
  strategy: round-robin
usage:
  batch_wait_s: 0.1
"""


def test_a_conversation_stays_where_its_prompt_is_cached_and_moves_when_that_provider_is_full(infra, tmp_path):
    with FakeProvider(models=["up-model"], api_key="anthropic-key", prompt_cache=True) as claude, \
            FakeProvider(models=["up-model"], prompt_cache=True) as gpt:
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url,
                   CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path, _config(claude, gpt), env) as stack:
            client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.edge_port}", api_key="k",
                                         max_retries=0)
            messages: list[dict] = []
            served: list[str] = []
            reasons: list[str] = []
            ids: list[str] = []
            for turn in range(1, 5):
                messages.append({"role": "user", "content": f"Turn {turn}: review the next hunk."})
                raw = client.messages.with_raw_response.create(model="m", max_tokens=50, system=SYSTEM,
                                                               messages=messages)
                answer = raw.parse()
                messages.append({"role": "assistant", "content": answer.content[0].text})
                served.append(raw.headers["x-llmgw-provider"])
                reasons.append(raw.headers["x-llmgw-route-reason"])
                ids.append(raw.headers["x-request-id"])

            home, other = served[0], ({"p-claude", "p-gpt"} - {served[0]}).pop()
            assert served == [home, home, home, other], reasons
            assert reasons[1].startswith(f"{home}: cache affinity (prefix cached here "), reasons[1]
            assert reasons[2].startswith(f"{home}: cache affinity ("), reasons[2]
            assert f"{home} skipped: requests_per_minute reached" in reasons[3], reasons[3]
            assert "(cache affinity ignored: no capacity)" in reasons[3], reasons[3]

            # the upstream got the cache_control block as the client sent it (the Anthropic face), or the
            # system prompt as the first message (the OpenAI face: its caching is automatic)
            upstream = claude if home == "p-claude" else gpt
            first = upstream.requests[0]["body"]
            if home == "p-claude":
                assert first["system"] == SYSTEM
            else:
                assert first["messages"][0] == {"role": "system", "content": SYSTEM[0]["text"]}

            with admin_client(stack) as ui:
                def rows():
                    found = {r["request_id"]: r for r in ui.get("/api/requests", params={"limit": 100}).json()["rows"]}
                    return [found[i] for i in ids] if all(i in found for i in ids) else None

                log = wait_for(rows, timeout=30)
            assert [r["provider"] for r in log] == served
            cached = [r["tokens_cached"] for r in log]
            assert cached[0] == 0 and cached[1] > 1000 and cached[2] > 1000, cached
            assert cached[3] == 0, cached  # the new provider had never seen the prefix
