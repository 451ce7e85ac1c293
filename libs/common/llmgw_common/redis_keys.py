"""Every Redis key the gateway writes or reads, named in one place.

Services build key names from these constants only, and Lua scripts get them through ``lua()`` (their
``$NAME`` placeholders become the constants' text), so a change of layout (a prefix per deployment) is a
change of this module alone. What each key holds is told where it is used:
``windows.py`` (usage windows), ``leases.py`` (admission leases), the router's ``store.py`` (health, pin),
the usage service's ``projection.py`` (ClickHouse insert claims), ``brute_force.py`` (failed credential checks).
"""

from __future__ import annotations

from string import Template

ROOT = "llmgw:"

# Redis Cluster runs a script only when every key it touches is in one hash slot, and the admission script
# touches them all: windows, months, leases, cooldowns, breakers, in-flight sets, pin and switches. So every
# key a script touches carries one hash tag and lives in one slot, on one shard (docs/scaling.md, "Redis").
# Keys no script groups with others (the failed-credential counters, the migration lock) spread untagged.
STATE = ROOT + "{state}:"

# ---- usage windows (llmgw_common.windows) -------------------------------------------------------------
WINDOW_PREFIX = STATE + "w:"  # + <scope>:<bucket_s>:<bucket_start>: hash req, tin, tout, cost
CALENDAR_PREFIX = STATE + "cal:"  # + <scope>:month:<YYYY-MM>: a key's calendar-month totals
SCOPES = STATE + "scopes"  # set of every scope ever written
SEEN_PREFIX = STATE + "seen:"  # + <event id>: an event already applied to the windows (an id not a ULID)
SEEN_SET_PREFIX = STATE + "seenset:"  # + <minute>: set of ULID event ids made in that minute, already applied

# ---- admission leases (llmgw_common.leases) -----------------------------------------------------------
LEASES = STATE + "leases"  # zset: member -> expiry (epoch ms)
LEASE_PREFIX = STATE + "lease:"  # + <member>: hash of what was reserved

# ---- capacity leases for routes with limits (llmgw_router.capacity_leases) ----------------------------
CAP_LEASES = STATE + "caplease"  # zset: lease id -> when the reaper takes it (epoch ms)
CAP_LEASE_PREFIX = STATE + "caplease:"  # + <lease id>: hash of what the lease reserved and its state
CAP_LEASE_ENDS = STATE + "capleaseends"  # zset: live lease id -> its end (epoch ms), until given back or reaped
CAP_EDGES_PREFIX = STATE + "capedges:"  # + <provider scope>|<model scope>|<key scope>: zset edge -> last ask (ms)

# ---- router: shared health and switches (llmgw_router.store) ------------------------------------------
PIN = STATE + "pin"  # the pinned provider id
SMART = STATE + "smart"  # "1" / "0": smart routing switched on or off (absent: the config's default)
ANSWER_PREFIX = STATE + "adm:"  # + <request id>:<attempt>: the provider admitted (a question asked again)
COOLDOWN_PREFIX = STATE + "cool:"  # + <provider>: cooldown after a 429 (PX)
BREAKER_PREFIX = STATE + "brk:"  # + <provider>: hash open_until (ms)
PROBE_PREFIX = STATE + "probe:"  # + <provider>: the half-open breaker's probe in flight
FAILURES_PREFIX = STATE + "fail:"  # + <provider>: zset of recent failures
INFLIGHT_PREFIX = STATE + "inflight:"  # + <provider>: zset request id -> admitted at (ms)
LATENCY_PREFIX = STATE + "lat:"  # + <provider>: moving average latency (ms)
# + <prefix hash>: "<provider> <served at ms>", the provider holding that prompt prefix in its cache (PX: the
# cache's lifetime; llmgw_router.cache_affinity)
AFFINITY_PREFIX = ROOT + "affinity:"

# ---- failed credential checks (llmgw_common.brute_force) ---------------------------------------------
AUTH_FAILURES_PREFIX = ROOT + "authfail:"  # + <realm>:<client address>: failures in the window (PX)

# ---- usage service: ClickHouse insert claims (llmgw_usage.projection) ---------------------------------
CLAIM_PREFIX = STATE + "chclaim:"  # + <table uuid>:<event id>: the replica inserting that event
MIGRATE_LOCK = ROOT + "migrate:lock"  # one ClickHouse migration job at a time (llmgw_usage.migrate)

# ---- upgrade from the layout before the hash tag (llmgw_usage.key_layout) --------------------------------
LAYOUT_MOVED = STATE + "layout-moved"  # set once the keys of the untagged layout were moved under STATE

# what a Lua script may name as $NAME
_LUA_NAMES = {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}


def lua(script: str) -> str:
    """A Lua script with its ``$NAME`` placeholders replaced by the key names above (an unknown name is an
    error at import time, not a wrong key at run time)."""
    return Template(script).substitute(_LUA_NAMES)
