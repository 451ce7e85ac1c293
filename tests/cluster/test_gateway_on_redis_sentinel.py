"""The whole gateway (every service as its own process, the official openai SDK as the client) on Redis
with Sentinel, its primary killed (-9) under load: clients get 200, 429 at the limit, or 503 with
Retry-After while no primary answers; never a 500, never more than the limit; then the gateway serves
again from the promoted replica."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from fakes import FakeProvider
from redis_topologies import SentinelSet
from stacks import running_stack

pytestmark = pytest.mark.integration

LIMIT = 30


def test_the_primary_killed_under_load_clients_get_clean_answers_and_the_limit_holds(infra, tmp_path):
    with FakeProvider(models=["m"]) as upstream:
        sentinels = SentinelSet(tmp_path / "redis").start()
        try:
            config = f"""
version: 1
providers:
  - id: capped
    base_url: {upstream.url}
    free_tier: true
    limits: {{requests_per_minute: {LIMIT}}}
    models:
      - name: m
"""
            env = dict(os.environ, NATS_URL=infra.nats_url, REDIS_URL=sentinels.url,
                       CLICKHOUSE_URL=infra.clickhouse_url)
            (tmp_path / "stack").mkdir()
            with running_stack(tmp_path / "stack", config, env) as stack:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key="k",
                                       max_retries=0, timeout=30)
                answers: Counter[int] = Counter()
                without_retry_after: list[int] = []
                lock = threading.Lock()
                killed = threading.Event()

                def one(i: int) -> None:
                    try:
                        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"{i}"}])
                        status = 200
                    except openai.APIStatusError as exc:
                        status = exc.status_code
                        if status == 503 and not exc.response.headers.get("retry-after"):
                            without_retry_after.append(i)
                    with lock:
                        answers[status] += 1
                        if answers[200] >= LIMIT // 2 and not killed.is_set():
                            killed.set()
                            sentinels.primary.kill()

                def load(worker: int) -> None:
                    deadline = time.monotonic() + 60
                    i = worker
                    # after the kill: on until the promoted primary refuses at the limit again
                    while time.monotonic() < deadline and not (killed.is_set() and answers[429] >= 5):
                        one(i)
                        i += 4
                        time.sleep(0.02)

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(load, range(4)))
            print(f"sentinel failover through the gateway: {dict(answers)}")
            assert killed.is_set() and answers[503] > 0
            assert set(answers) <= {200, 429, 503}, answers
            assert not without_retry_after
            assert answers[429] >= 5 and LIMIT - 4 <= answers[200] <= LIMIT  # never over; 4 in flight at most
            assert len(upstream.requests) == answers[200]
        finally:
            sentinels.stop()
