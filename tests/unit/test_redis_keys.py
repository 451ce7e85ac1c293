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


def test_every_script_the_services_register_resolves():
    from llmgw_common import windows
    from llmgw_router import capacity_leases, store
    from llmgw_usage import domain

    for script in (windows.READ_WINDOWS_LUA, store.ADMIT_LUA, store.OUTCOME_LUA, store.STATS_LUA, store.REAP_LUA,
                   store.GIVE_UP_LUA, capacity_leases.GRANT_LUA, capacity_leases.GIVE_BACK_LUA,
                   capacity_leases.REAP_LUA, domain.APPLY_EVENTS_LUA):
        text = redis_keys.lua(script)
        assert "$" not in text and "llmgw:" in text
