"""The fault scenarios of ``test_faults.py`` with leased admission on (issue 20: ``routing.leases: true``).

Same runner, same load, same checks (``test_faults.run_fault``); the limited route (``l-<fault>``) is now
admitted by the edge from capacity leases the router grants it, so each scenario also checks, on that route:

- nothing admitted past the limit: the 2xx counted against the limit of the window (an hour), and the Redis
  window after;
- every refusal a 429 or 503 with ``Retry-After``; every 2xx one ClickHouse row;
- no capacity leaked: once every lease is given back (or reaped, its edge dead) the window equals the rows
  stored, nothing reserved that nobody used;
- the fault hits while the edge holds a live lease of several requests (``leases_live_at_fault``).

The route without limits still fails no request while the router, NATS or Redis is away.

Only the scenarios where leases change something run here: the router, nats-server and Redis each killed and
frozen (the edge serves from its live leases, then refuses cleanly; its questions and give-backs wait or
fail), and the edge killed while it holds a lease (nobody gives it back: the routers find the edge process
gone and the reaper returns it once it ended, ``llmgw_router.dead_edges``). Left out: the usage service killed (the edge's side does not
change with leases; the usage service's settling of leased events is covered by the service tests) and the
whole runner killed (the edge-kill covers a lease nobody gives back).
"""

from __future__ import annotations

import pytest

from test_faults import FROZEN, run_fault, started_gateway, upstream  # noqa: F401 (upstream: a fixture)

pytestmark = pytest.mark.integration

# more than the per-request suite's 25: at the fault the edge holds a lease of several requests (an edge
# asking for its demand gets it while what is left is at least twice that), and the paced load still
# reaches the limit around the fault, where leases shrink to one request
LIMITED_PER_HOUR = 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream):  # noqa: F811
    with started_gateway(tmp_path_factory.mktemp("leased-faults"), upstream, leases=True,
                         limited_per_hour=LIMITED_PER_HOUR) as gw:
        yield gw


@pytest.mark.parametrize("part", ("router", "nats", "redis", "edge"))
def test_killed(gateway, part):
    run_fault(gateway, part)


@pytest.mark.parametrize("part", FROZEN)
def test_frozen(gateway, part):
    run_fault(gateway, f"{part}-frozen")
