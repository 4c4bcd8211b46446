import redis.asyncio as aioredis


def open_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, health_check_interval=15, socket_connect_timeout=5)


class NotDurable(Exception):
    """Fewer replicas than required confirmed a write in time: it must not be acknowledged."""


async def confirm_durable(redis: aioredis.Redis, replicas: int, timeout_ms: int) -> None:
    # WAIT blocks this connection until the writes it made reached `replicas` replicas; run it on
    # the same connection (a pipeline or a dedicated client) as the write it confirms.
    if replicas <= 0:
        return
    confirmed = await redis.execute_command("WAIT", replicas, timeout_ms)
    if int(confirmed) < replicas:
        raise NotDurable(f"{confirmed} of {replicas} replicas confirmed within {timeout_ms} ms")
