from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


def open_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, health_check_interval=15, socket_connect_timeout=5)


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
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys, args, client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        result, confirmed = await pipe.execute()
    if int(confirmed) < replicas:
        raise NotDurable(f"{confirmed} of {replicas} replicas confirmed within {timeout_ms} ms")
    return result
