from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

# A Redis Cluster is named by any of its nodes under one of these schemes: the client learns the
# rest of the cluster from that node.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PASSED_ON = ("username", "password", "socket_timeout", "socket_connect_timeout", "ssl")
_PINNED: "WeakKeyDictionary[RedisCluster, dict[str, aioredis.Redis]]" = WeakKeyDictionary()


class Cluster(RedisCluster):
    # redis-py learns the topology inside the first commands; a burst of them (scripts loading
    # themselves after NOSCRIPT among them) then races that refresh onto half-closed connections.
    # Learning it first, under the client's own lock, does not.
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """The plain redis:// URL of the node a cluster URL names (the URL itself otherwise)."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    return url if scheme is None else urlunsplit(parts._replace(scheme=scheme, path=""))


# Connections one client opens to one node. redis-py's default pool fails a command at once when
# all are busy ("Too many connections"): under a burst, a command waits for one instead.
POOL_SIZE = 100
POOL_WAIT_SECONDS = 5.0


def single_node(url: str, **options: Any) -> aioredis.Redis:
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT_SECONDS, **options))


def open_redis(url: str, **options: Any) -> aioredis.Redis:
    options = {"health_check_interval": 15, "socket_connect_timeout": 5, **options}
    if not is_cluster_url(url):
        return single_node(url, **options)
    # Typed as the single-node client: every call site uses commands both speak, and the few places
    # that differ (pub/sub, WAIT, raw reads) ask is_cluster() first.
    return cast(aioredis.Redis, Cluster.from_url(node_url(url), **options))


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def raw_reader(redis: aioredis.Redis, command: str, connections: int) -> aioredis.Redis:
    """A client of its own whose replies to `command` come back as hiredis parsed them, unreshaped,
    with room for at least `connections` commands at once (close it with aclose)."""
    reader: Any
    if is_cluster(redis):
        manager = cast(RedisCluster, redis).nodes_manager
        startup = next(iter(manager.startup_nodes.values()))
        reader = Cluster(host=startup.host, port=startup.port, **_kwargs(manager.connection_kwargs))
    else:
        # Not the pool of `redis`: blocked reads, one per partition owned, would take all of its
        # connections and leave lease renewals and acks waiting behind them.
        shared = redis.connection_pool
        reader = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool(
            connection_class=shared.connection_class, max_connections=connections, timeout=POOL_WAIT_SECONDS,
            **shared.connection_kwargs))
    reader.set_response_callback(command, _unparsed)
    return cast(aioredis.Redis, reader)


def _unparsed(reply: Any, **_: Any) -> Any:
    return reply


def _kwargs(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in connection_kwargs.items() if name in _PASSED_ON}


async def pinned(redis: aioredis.Redis, key: str) -> aioredis.Redis:
    """A client on the one connection pool that serves `key`: WAIT only counts the writes made on its
    own connection, and a cluster client would send WAIT to every primary instead."""
    if not is_cluster(redis):
        return redis
    cluster = cast(RedisCluster, redis)
    await cluster.initialize()  # learns the slots on first use; a no-op afterwards
    node = cluster.get_node_from_key(key)
    if node is None:
        raise RuntimeError(f"no cluster node serves {key!r}")
    # A slot that moved later answers MOVED here: the write fails unacknowledged and is retried.
    clients = _PINNED.setdefault(cluster, {})
    if node.name not in clients:
        clients[node.name] = aioredis.Redis(host=node.host, port=int(node.port),
                                            **_kwargs(cluster.nodes_manager.connection_kwargs))
    return clients[node.name]


async def close_redis(redis: aioredis.Redis) -> None:
    if is_cluster(redis):
        for client in _PINNED.pop(cast(RedisCluster, redis), {}).values():
            await client.aclose()
    await redis.aclose()


class NotDurable(Exception):
    """Fewer replicas than required confirmed a write in time: it must not be acknowledged."""


async def durably(
    redis: aioredis.Redis, replicas: int, timeout_ms: int, script: AsyncScript, keys: Sequence[str],
    args: Sequence[Any],
) -> Any:
    """Runs a write script and, when replicas are required, waits for them before returning."""
    if replicas <= 0:
        return await script(keys, args)
    # WAIT only covers the writes of its own connection: script and WAIT share one pipeline.
    async with (await pinned(redis, keys[0])).pipeline(transaction=False) as pipe:
        await script(keys, args, client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        result, confirmed = await pipe.execute()
    if int(confirmed) < replicas:
        raise NotDurable(f"{confirmed} of {replicas} replicas confirmed within {timeout_ms} ms")
    return result


_SHARDED: "WeakKeyDictionary[RedisCluster, bool]" = WeakKeyDictionary()


async def sharded_pubsub(redis: Any) -> bool:
    """Whether pub/sub goes through SPUBLISH/SSUBSCRIBE: on a cluster of Redis 7 or newer."""
    if not is_cluster(redis):
        return False
    cluster = cast(RedisCluster, redis)
    if cluster not in _SHARDED:
        info = await cluster.info("server", target_nodes=RedisCluster.RANDOM)
        _SHARDED[cluster] = int(str(info["redis_version"]).split(".")[0]) >= 7
    return _SHARDED[cluster]
