"""Redis key names come from one module (``llmgw_common.redis_keys``): a change of layout (hash tags for
Redis Cluster) is a change of that module alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmgw_common import redis_keys

ROOT = Path(__file__).resolve().parents[2]
# "llmgw:" that is no Redis key: the marker of reasoning the edge re-encodes (Responses API)
NOT_REDIS = {"services/edge/llmgw_edge/api/openai_responses.py"}
KEY_LITERAL = re.compile(r"""['"]llmgw:""")


def test_no_key_name_is_spelled_outside_the_module():
    sources = [p for top in ("services", "libs") for p in (ROOT / top).rglob("*.py")]
    assert sources
    spelled = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel in NOT_REDIS or path.name == "redis_keys.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if KEY_LITERAL.search(line.split("#", 1)[0]):
                spelled.append(f"{rel}:{n}: {line.strip()}")
    assert not spelled, "Redis key names outside llmgw_common.redis_keys:\n" + "\n".join(spelled)


def test_lua_scripts_get_the_key_names_from_the_module():
    assert redis_keys.lua("redis.call('GET', '$PIN') .. '$WINDOW_PREFIX'") == \
        f"redis.call('GET', '{redis_keys.PIN}') .. '{redis_keys.WINDOW_PREFIX}'"
    with pytest.raises(KeyError):
        redis_keys.lua("redis.call('GET', '$NO_SUCH_KEY')")


def _scripts() -> list[str]:
    from llmgw_common import windows
    from llmgw_router import capacity_leases, store
    from llmgw_usage import domain

    return [windows.READ_WINDOWS_LUA, store.ADMIT_LUA, store.OUTCOME_LUA, store.STATS_LUA, store.REAP_LUA,
            store.GIVE_UP_LUA, capacity_leases.GRANT_LUA, capacity_leases.GIVE_BACK_LUA, capacity_leases.REAP_LUA,
            domain.APPLY_EVENTS_LUA]


def test_every_script_the_services_register_resolves():
    for script in _scripts():
        text = redis_keys.lua(script)
        assert "$" not in text and "llmgw:" in text


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first { and the next }, else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def test_every_key_a_script_names_carries_the_state_tag():
    # Redis Cluster runs a script only when all its keys share one slot (docs/scaling.md, "Redis")
    named = {m for script in _scripts() for m in re.findall(r"\$([A-Z_]+)", script)}
    assert {"WINDOW_PREFIX", "LEASE_PREFIX", "COOLDOWN_PREFIX", "PIN"} <= named
    assert {name: _hash_tag(getattr(redis_keys, name) + "x") for name in named} == {name: "state" for name in named}


def test_keys_the_services_pass_to_scripts_carry_the_state_tag_too():
    from llmgw_common import windows

    for key in (redis_keys.SCOPES, redis_keys.ANSWER_PREFIX + "r:0", windows.month_key("k:x", 0, "UTC")[0],
                redis_keys.SEEN_PREFIX + "e", redis_keys.CLAIM_PREFIX + "t:e"):
        assert _hash_tag(key) == "state", key
    assert _hash_tag(redis_keys.AUTH_FAILURES_PREFIX + "key:10.0.0.1") != "state"  # spreads over the shards
