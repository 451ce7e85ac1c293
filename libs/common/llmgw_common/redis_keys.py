"""Every Redis key the gateway writes or reads, named in one place.

Services build key names from these constants only, and Lua scripts get them through ``lua()`` (their
``$NAME`` placeholders become the constants' text), so a change of layout (hash tags for Redis Cluster, a
prefix per deployment) is a change of this module alone. What each key holds is told where it is used:
``windows.py`` (usage windows), ``leases.py`` (admission leases), the router's ``store.py`` (health, pin),
the usage service's ``projection.py`` (ClickHouse insert claims), ``brute_force.py`` (failed credential checks).
"""

from __future__ import annotations

from string import Template

ROOT = "llmgw:"

# ---- usage windows (llmgw_common.windows) -------------------------------------------------------------
WINDOW_PREFIX = ROOT + "w:"  # + <scope>:<bucket_s>:<bucket_start>: hash req, tin, tout, cost
CALENDAR_PREFIX = ROOT + "cal:"  # + <scope>:month:<YYYY-MM>: a key's calendar-month totals
SCOPES = ROOT + "scopes"  # set of every scope ever written
SEEN_PREFIX = ROOT + "seen:"  # + <event id>: an event already applied to the windows (an id not a ULID)
SEEN_SET_PREFIX = ROOT + "seenset:"  # + <minute>: set of ULID event ids made in that minute, already applied

# ---- admission leases (llmgw_common.leases) -----------------------------------------------------------
LEASES = ROOT + "leases"  # zset: member -> expiry (epoch ms)
LEASE_PREFIX = ROOT + "lease:"  # + <member>: hash of what was reserved

# ---- capacity leases for routes with limits (llmgw_router.capacity_leases) ----------------------------
CAP_LEASES = ROOT + "caplease"  # zset: lease id -> when the reaper takes it (epoch ms)
CAP_LEASE_PREFIX = ROOT + "caplease:"  # + <lease id>: hash of what the lease reserved and its state
CAP_EDGES_PREFIX = ROOT + "capedges:"  # + <provider scope>|<model scope>|<key scope>: zset edge -> last ask (ms)

# ---- router: shared health and switches (llmgw_router.store) ------------------------------------------
PIN = ROOT + "pin"  # the pinned provider id
SMART = ROOT + "smart"  # "1" / "0": smart routing switched on or off (absent: the config's default)
ANSWER_PREFIX = ROOT + "adm:"  # + <request id>:<attempt>: the provider admitted (a question asked again)
COOLDOWN_PREFIX = ROOT + "cool:"  # + <provider>: cooldown after a 429 (PX)
BREAKER_PREFIX = ROOT + "brk:"  # + <provider>: hash open_until (ms)
PROBE_PREFIX = ROOT + "probe:"  # + <provider>: the half-open breaker's probe in flight
FAILURES_PREFIX = ROOT + "fail:"  # + <provider>: zset of recent failures
INFLIGHT_PREFIX = ROOT + "inflight:"  # + <provider>: zset request id -> admitted at (ms)
LATENCY_PREFIX = ROOT + "lat:"  # + <provider>: moving average latency (ms)
# + <prefix hash>: "<provider> <served at ms>", the provider holding that prompt prefix in its cache (PX: the
# cache's lifetime; llmgw_router.cache_affinity)
AFFINITY_PREFIX = ROOT + "affinity:"

# ---- failed credential checks (llmgw_common.brute_force) ---------------------------------------------
AUTH_FAILURES_PREFIX = ROOT + "authfail:"  # + <realm>:<client address>: failures in the window (PX)

# ---- usage service: ClickHouse insert claims (llmgw_usage.projection) ---------------------------------
CLAIM_PREFIX = ROOT + "chclaim:"  # + <table uuid>:<event id>: the replica inserting that event
MIGRATE_LOCK = ROOT + "migrate:lock"  # one ClickHouse migration job at a time (llmgw_usage.migrate)

# what a Lua script may name as $NAME
_LUA_NAMES = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}


def lua(script: str) -> str:
    """A Lua script with its ``$NAME`` placeholders replaced by the key names above (an unknown name is an
    error at import time, not a wrong key at run time)."""
    return Template(script).substitute(_LUA_NAMES)
