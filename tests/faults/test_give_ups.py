"""No capacity leaks, and no bill for a request nobody answered (issue 20).

A routing question the edge gave up on (its router did not answer within ``decide_timeout_s``) used to be
admitted anyway once a frozen nats-server or router resumed: the window filled with requests nobody served
(17 served, the window at 30/30) and a key was charged for them by the abandoned-admission reaper. Here
``llmgw run`` (two router replicas, its own nats-server and Redis) serves paced load from the official
openai SDK while nats-server, or both routers, are frozen (SIGSTOP: connections stay open, questions wait
in them) for 5 s, then resumed; the load goes on until the limit refuses. Then, once the projections have
caught up:

- under a 30-per-minute provider limit: the provider's window == the requests served, and at most 30;
- under a $0.30 key budget at $0.01 a request: the key's charge == $0.01 x the requests answered;
- no request was recorded as abandoned (status 599), every 2xx is one row, refusals are 429 or 503 with
  Retry-After.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import openai
import pytest

from fakes import FakeProvider
from llmgw_cli.infra import free_port
from llmgw_common.leases import ABANDONED_STATUS
from stacks import RunnerProcess, wait_for

pytestmark = pytest.mark.integration

LIMIT = 30  # requests a minute on the provider, or the key's budget in cents
FREEZE_S = 5.0
WORKERS = 3
PAUSE_S = 0.5  # between one worker's requests: the limit lasts past the freeze
BEFORE_S = 1.0
AFTER_S = 3.0  # load after the resume, at least; then until the limit refuses
LOAD_BOUND_S = 30.0
CLIENT_TIMEOUT_S = 10.0
ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(24)
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
FROZEN = ("nats", "router")
LIMITS = ("rpm", "budget")


def _config(upstream: FakeProvider) -> str:
    providers = ""
    for part in FROZEN:
        providers += f"""
  - id: g-rpm-{part}
    base_url: {upstream.url}
    limits: {{requests_per_minute: {LIMIT}}}
    models: [{{name: m-rpm-{part}, upstream: demo-chat}}]
  - id: g-budget-{part}
    base_url: {upstream.url}
    models: [{{name: m-budget-{part}, upstream: demo-chat, price: {{per_request: 0.01}}}}]
"""
    return f"""
version: 1
providers:{providers}
routing:
  decide_timeout_s: 2
  abandoned_after_s: 4  # a leaked admission would be billed as abandoned within the test
usage:
  batch_wait_s: 0.1
"""


@dataclass
class Result:
    status: int | None
    request_id: str | None
    retry_after: str | None = None


@dataclass
class Load:
    """``WORKERS`` paced openai SDK clients until ``stop``."""

    edge_port: int
    model: str
    api_key: str
    results: list[Result] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WORKERS)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(CLIENT_TIMEOUT_S + 5)

    def _run(self, worker: int) -> None:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.edge_port}/v1", api_key=self.api_key,
                               max_retries=0, timeout=CLIENT_TIMEOUT_S)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=self.model, messages=[{"role": "user", "content": f"give-up load {worker} {n}"}])
                raw.parse()
                result = Result(raw.status_code, raw.headers.get("x-request-id"))
            except openai.APIStatusError as exc:
                result = Result(exc.status_code, exc.response.headers.get("x-request-id"),
                                exc.response.headers.get("retry-after"))
            except openai.APIConnectionError:
                result = Result(None, None)
            self.results.append(result)
            self._stop.wait(PAUSE_S)

    def count(self, status: int | None) -> int:
        return sum(1 for r in self.results if r.status == status)


@pytest.fixture(scope="module")
def upstream():
    with FakeProvider(models=["demo-chat"], delay_s=0.02) as fake:
        yield fake


@pytest.fixture(scope="module")
def runner(tmp_path_factory, upstream):
    root = tmp_path_factory.mktemp("give-ups")
    config = root / "llmgw.yaml"
    config.write_text(_config(upstream))
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "REDIS_URL", "CLICKHOUSE_URL") and not k.endswith("_API_KEY")}
    env["LLMGW_ADMIN_TOKEN"] = ADMIN_TOKEN
    runner = RunnerProcess(config, root / "state", free_port(), free_port(), env, root / "runner.log",
                           args=("--replicas", "router=2")).start()
    try:
        yield runner
    finally:
        runner.stop()


def _ui(runner: RunnerProcess, path: str, **kwargs) -> httpx.Response:
    return httpx.request(kwargs.pop("method", "GET"), f"http://127.0.0.1:{runner.ui_port}{path}", headers=ADMIN,
                         timeout=10, **kwargs).raise_for_status()


def _new_key(runner: RunnerProcess, name: str, limits: dict) -> tuple[str, str]:
    """A gateway key (id, secret), once the edge accepts it."""
    body = _ui(runner, "/api/keys", method="POST", json={"name": name, "limits": limits}).json()
    secret = body["secret"]
    models = f"http://127.0.0.1:{runner.edge_port}/v1/models"
    wait_for(lambda: httpx.get(models, headers={"authorization": f"Bearer {secret}"}).status_code == 200,
             timeout=10, interval=0.1)
    return body["key"]["id"], secret


def _provider_window(runner: RunnerProcess, provider: str) -> int:
    for s in _ui(runner, "/api/usage/current").json()["scopes"]:
        if s["scope"] == "provider" and s["provider"] == provider:
            return s["windows"]["day"]["requests"]
    return 0


def _rows(runner: RunnerProcess, provider: str) -> list[dict]:
    return _ui(runner, "/api/requests", params={"provider": provider, "limit": 1000}).json()["rows"]


def _freeze(runner: RunnerProcess, part: str) -> list[int]:
    pids = runner.pids(part)
    assert pids, f"no {part} process to freeze"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("part", FROZEN)
def test_what_the_edge_gave_up_on_is_released_and_never_billed(runner, part, limit):
    provider, model = f"g-{limit}-{part}", f"m-{limit}-{part}"
    key_id, secret = _new_key(runner, f"give-up-{limit}-{part}",
                              {"cost_per_month": str(Decimal(LIMIT) / 100)} if limit == "budget" else {})
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{runner.edge_port}/healthz").status_code == 200, timeout=30)
    load = Load(runner.edge_port, model, secret)
    pids: list[int] = []
    try:
        time.sleep(BEFORE_S)
        assert load.count(200) < LIMIT, "the limit was spent before the freeze"
        pids = _freeze(runner, part)
        time.sleep(FREEZE_S)
        _thaw(pids)
        pids = []
        resumed = len(load.results)
        time.sleep(AFTER_S)
        # on until the limit refuses (capacity given back by the give-ups is served first)
        wait_for(lambda: any(r.status == 429 for r in load.results[resumed:]), timeout=LOAD_BOUND_S, interval=0.1)
    finally:
        _thaw(pids)
        load.stop()
    served = {r.request_id for r in load.results if r.status == 200}
    given_up = load.count(503)
    failed = [r for r in load.results if r.status != 200]
    summary = (f"{part} frozen, {limit}: {len(served)} served, {given_up} given up (503), "
               f"{load.count(429)} refused (429), {load.count(None)} without an answer")
    assert given_up > 0, f"no routing question was given up on: the freeze proved nothing ({summary})"
    assert all(r.status in (429, 503) and r.retry_after for r in failed), f"unclean refusals: {summary}"

    # the projections catch up: every 2xx is one row, nothing was abandoned
    def rows_complete():
        rows = _rows(runner, provider)
        return rows if {r["request_id"] for r in rows if r["status"] < 400} >= served else None

    rows = wait_for(rows_complete, timeout=30, interval=0.5)
    assert len(rows) == len({r["request_id"] for r in rows}), f"a request stored twice: {summary}"
    assert {r["request_id"] for r in rows if r["status"] < 400} == served, summary
    if limit == "rpm":
        assert len(served) <= LIMIT, summary
        # the window reads what was served (a leak would keep it above, then bill it as abandoned)
        try:
            wait_for(lambda: _provider_window(runner, provider) == len(served), timeout=15, interval=0.5)
        except AssertionError:
            raise AssertionError(f"the window reads {_provider_window(runner, provider)}: {summary}") from None
    else:
        charged = lambda: Decimal(str(_ui(runner, f"/api/keys/{key_id}/usage").json()["month"]["cost_usd"]))  # noqa: E731
        try:
            wait_for(lambda: charged() == Decimal("0.01") * len(served), timeout=15, interval=0.5)
        except AssertionError:
            raise AssertionError(f"the key was charged ${charged()}: {summary}") from None
        assert charged() <= Decimal(LIMIT) / 100, summary
    # a leaked admission would have become an abandoned event (599) abandoned_after_s (4 s) after it was made
    abandoned = [r for r in _rows(runner, provider) if r["status"] == ABANDONED_STATUS]
    assert not abandoned, f"{len(abandoned)} given-up requests billed as abandoned: {summary}"
