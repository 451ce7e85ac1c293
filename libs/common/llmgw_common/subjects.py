"""NATS subject names: the only place they are spelled out.

Query subjects must never fall under a JetStream stream's subjects: a request
published on a stream subject is stored and acknowledged by JetStream, and the
requester would get a PubAck instead of the service's reply.
"""

PREFIX = "llmgw"

# router (request/reply, queue group "router")
ROUTER_DECIDE = "llmgw.router.decide"
ROUTER_STATE = "llmgw.router.state"
ROUTER_PIN = "llmgw.router.pin"
ROUTER_SMART = "llmgw.router.smart"
# broadcast (every replica): re-read the shared routing state now (after a pin or smart change)
ROUTER_REFRESH = "llmgw.router.refresh"
# broadcast by each router replica once it applied something that changes plans (pin, smart, config, prices,
# a gateway key, a cooldown or an open breaker): edges drop the plans they reuse (docs/routing.md, "Plans")
ROUTER_CHANGED = "llmgw.router.changed"
# attempt outcomes from the edge (plain publish, queue group "router": one replica applies each)
ROUTER_OUTCOME = "llmgw.router.outcome"
# successful attempts' outcomes in batches (the edge sends one message per ~50 ms instead of one per request)
ROUTER_OUTCOMES = "llmgw.router.outcomes"
# the edge's streams still running: their admission leases are extended (plain publish, queue group "router")
ROUTER_LEASE_RENEW = "llmgw.router.lease.renew"
# the edge gave up on a routing question: a router releases its admission (request/reply, queue group "router":
# the edge asks again until one confirms)
ROUTER_GIVE_UP = "llmgw.router.giveup"
# capacity leases for routes with limits (llmgw_common.capacity; request/reply, queue group "router"): an edge
# asks for one (LeaseAsk -> LeaseGrant) and gives it back (LeaseReturn -> LeaseReturned)
ROUTER_LEASE_GRANT = "llmgw.router.capacity.grant"
ROUTER_LEASE_RETURN = "llmgw.router.capacity.return"
# what an edge admitted so far from its live leases (LeaseUses; plain publish, queue group "router"): only for
# the windows' views, which show what was admitted, not what a lease holds unused (windows.READ_WINDOWS_LUA)
ROUTER_LEASE_USED = "llmgw.router.capacity.used"

# pricing (request/reply, queue group "pricing")
PRICING_LOOKUP = "llmgw.pricing.lookup"
PRICING_LIST = "llmgw.pricing.list"
# announcement (plain publish) when the effective prices change
PRICING_CHANGED = "llmgw.pricing.changed"

# usage events: the JetStream stream holds everything under USAGE_EVENT_PREFIX
USAGE_STREAM = "LLMGW_USAGE"
USAGE_EVENT_PREFIX = "llmgw.usage.event"
USAGE_EVENT_WILDCARD = USAGE_EVENT_PREFIX + ".>"
USAGE_CONSUMER = "usage-projector"

# usage queries (request/reply, queue group "usage"); outside the stream's subjects
USAGE_QUERY_CURRENT = "llmgw.usage.query.current"
USAGE_QUERY_HISTORY = "llmgw.usage.query.history"
USAGE_QUERY_REQUESTS = "llmgw.usage.query.requests"
# one gateway key's live windows and calendar-month totals (the admin API's GET /api/keys/{id}/usage)
USAGE_QUERY_KEY = "llmgw.usage.query.key"
# errors, 429s and latency percentiles per provider and model over a range, from ClickHouse
USAGE_QUERY_STATS = "llmgw.usage.query.stats"
# replay into ClickHouse through the usage service (it owns the chDB directory)
USAGE_REPLAY = "llmgw.usage.replay"
# dev only (LLMGW_DEV_SIMULATE=1): synthetic usage events
USAGE_SIMULATE = "llmgw.usage.simulate"

# dead letters: stream messages the usage consumer refused (not an event, out of range, too large), each
# under its reason (llmgw.usage.dead.<reason>) with the original bytes; outside LLMGW_USAGE's subjects
USAGE_DLQ_STREAM = "LLMGW_USAGE_DLQ"
USAGE_DEAD_PREFIX = "llmgw.usage.dead"
USAGE_DEAD_WILDCARD = USAGE_DEAD_PREFIX + ".>"
# the dead letters, newest first (request/reply, queue group "usage")
USAGE_QUERY_DEAD = "llmgw.usage.query.dead"

# config: the text lives in the LLMGW_CONFIG key-value bucket (config_bucket), which every process watches.
# An announcement after ui-api wrote a new revision (informational: nothing needs it to reload)
CONFIG_CHANGED = "llmgw.config.changed"
# every process (edges too, no queue group) answers with the config revision it runs (ConfigRevision)
CONFIG_REVISIONS = "llmgw.config.revisions"


# every edge process answers on llmgw.edge.alive.<its instance> (empty request and reply): the routers ask an
# edge that holds a capacity lease past its end; "no responders" means its NATS connection closed (the
# process died), and its leases go back without waiting for requests it might still be serving
EDGE_ALIVE_PREFIX = "llmgw.edge.alive"


def edge_alive(instance: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance) or "_"
    return f"{EDGE_ALIVE_PREFIX}.{safe}"


def usage_event_subject(provider: str) -> str:
    """Per-provider subject so consumers can filter; tokens are sanitised."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in provider) or "_"
    return f"{USAGE_EVENT_PREFIX}.{safe}"


def usage_dead_subject(reason: str) -> str:
    """Subject of a dead letter refused for ``reason`` (a short code: letters, digits, '_')."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in reason) or "_"
    return f"{USAGE_DEAD_PREFIX}.{safe}"
