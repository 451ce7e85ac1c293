"""Issue 4's done-when: after mixed requests, ClickHouse (raw events and the rollup Grafana reads),
the Redis windows and what the clients received all agree — and still agree after Redis is
flushed and ``llmgw replay --target redis`` rebuilds the windows (twice: nothing doubles)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import openai
import pytest
import redis as redis_sync

from admin import admin_client
from fakes import FakeProvider
from stacks import running_stack, wait_for

pytestmark = pytest.mark.integration

PROVIDER = "agree"


@pytest.fixture(scope="module")
def setup(infra, tmp_path_factory):
    with FakeProvider(models=["agree-model"]) as upstream:
        config = f"""
providers:
  - id: {PROVIDER}
    base_url: {upstream.url}
    models:
      - name: agree-model
        price: {{input_per_mtok: 2, output_per_mtok: 8}}
usage:
  batch_wait_s: 0.1
"""
        env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, CLICKHOUSE_URL=infra.clickhouse_url)
        with running_stack(tmp_path_factory.mktemp("agree"), config, env) as stack:
            yield stack, upstream, env


def test_clickhouse_rollups_redis_and_clients_agree_before_and_after_replay(setup):
    stack, upstream, env = setup
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k", max_retries=0)
    ui = admin_client(stack)
    since = (datetime.now(timezone.utc) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    received = {"requests": 0, "tokens_in": 0, "tokens_out": 0}

    def add(usage):
        received["requests"] += 1
        received["tokens_in"] += usage.prompt_tokens
        received["tokens_out"] += usage.completion_tokens

    for i in range(12):
        text = "word " * (i + 1)
        if i % 3 == 0:
            chunks = list(client.chat.completions.create(
                model="agree-model", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": text}]))
            add(chunks[-1].usage)
        else:
            add(client.chat.completions.create(model="agree-model", max_tokens=3 + i,
                                               messages=[{"role": "user", "content": text}]).usage)
    upstream.behaviour.fail_status = 500  # failed requests are recorded too, with no tokens
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="agree-model", messages=[{"role": "user", "content": "x"}])
    upstream.behaviour.fail_status = None
    expected_cost = (received["tokens_in"] * 2 + received["tokens_out"] * 8) / 1e6

    def clickhouse(source_wanted=None):
        body = ui.get("/api/usage/history", params={"provider": PROVIDER, "since": since.isoformat(),
                                                    "bucket_s": 86400}).raise_for_status().json()
        if source_wanted and body.get("source") != source_wanted:
            return None
        rows = body["rows"]
        return {k: sum(r[k] for r in rows) for k in ("requests", "tokens_in", "tokens_out")} | {
            "cost": sum(float(r["cost_usd"]) for r in rows)}

    def redis_day():
        for s in ui.get("/api/usage/current").raise_for_status().json()["scopes"]:
            if s["scope"] == "provider" and s["provider"] == PROVIDER:
                d = s["windows"]["day"]
                return {k: d[k] for k in ("requests", "tokens_in", "tokens_out")} | {"cost": float(d["cost_usd"])}
        return None

    def agrees(totals):
        return totals is not None and {k: totals[k] for k in received} == received \
            and abs(totals["cost"] - expected_cost) < 1e-9

    # the request log counts the two failures as requests with no provider, so the provider scope has 12
    ch = wait_for(lambda: (t := clickhouse()) and agrees(t) and t, timeout=30)
    assert ch["requests"] == 12
    # the per-minute rollup Grafana's cheap panels read says the same as the raw events
    rollup = wait_for(lambda: clickhouse("usage_minute"), timeout=10)
    assert agrees(rollup)
    assert agrees(wait_for(lambda: (t := redis_day()) and agrees(t) and t, timeout=30))

    r = redis_sync.Redis.from_url(env["REDIS_URL"])
    r.flushdb()
    r.close()
    assert redis_day() is None
    for _ in range(2):  # a second replay changes nothing
        done = subprocess.run([sys.executable, "-m", "llmgw_cli.main", "replay", "--target", "redis",
                               "--since", "1h"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert agrees(redis_day())
