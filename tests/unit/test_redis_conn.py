"""REDIS_URL forms: one Redis, a Sentinel set, a Redis Cluster (llmgw_common.redis_conn; the servers
themselves are in tests/cluster)."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from llmgw_common.redis_conn import NodeSet, connect_redis, parse_node_set


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database():
    assert parse_node_set("redis+sentinel://:s3cret@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/2"
                          "?sentinel_password=other") == NodeSet(
        "redis+sentinel", [("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381)], None, "s3cret",
        service="mymaster", db=2, sentinel_password="other")


def test_a_cluster_url_names_its_startup_nodes():
    assert parse_node_set("redis+cluster://gw:pw@r1:7000,r2") == NodeSet(
        "redis+cluster", [("r1", 7000), ("r2", 6379)], "gw", "pw")


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://h:26379", "needs the service name"),
    ("redis+sentinel://h:26379/mymaster/zero", "needs the service name"),
    ("redis+sentinel://:pw@h:port/m", "port of h is not a number"),
    ("redis+cluster://h:7000/1", "takes no path"),
    ("redis+cluster://:1", "a node without a host"),
])
def test_a_malformed_url_says_what_is_wrong_without_its_password(url, says):
    with pytest.raises(ValueError, match=says) as err:
        parse_node_set(url)
    assert "pw" not in str(err.value)


async def test_each_url_form_gets_its_client():
    cluster = connect_redis("redis+cluster://127.0.0.1:7000")
    sentinel = connect_redis("redis+sentinel://127.0.0.1:26379/mymaster")
    single = connect_redis("redis://127.0.0.1:6379/0")
    try:
        assert isinstance(cluster, RedisCluster)
        assert sentinel.connection_pool.service_name == "mymaster"
        assert not isinstance(single, RedisCluster) and not hasattr(single.connection_pool, "service_name")
    finally:
        for client in (cluster, sentinel, single):
            await client.aclose()
