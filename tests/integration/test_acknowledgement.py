import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from infra.redis_client import NotDurable, confirm_durable
from tests.private_redis import PrivateRedis


async def test_wait_for_replicas_before_acknowledging(tmp_path: Path) -> None:
    primary = PrivateRedis(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    await primary.start()
    replica = PrivateRedis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    try:
        async with aioredis.Redis.from_url(primary.url) as client:
            await client.xadd("nft:ack", {"v": "1"})
            # No replica yet: the write must not be reported as durable.
            with pytest.raises(NotDurable):
                await confirm_durable(client, replicas=1, timeout_ms=200)
            await confirm_durable(client, replicas=0, timeout_ms=200)  # the setting's default: no wait
            await replica.start()
            async with aioredis.Redis.from_url(replica.url) as follower:
                for _ in range(200):
                    info = await follower.info("replication")
                    if info.get("master_link_status") == "up":
                        break
                    await asyncio.sleep(0.05)
            await client.xadd("nft:ack", {"v": "2"})
            await confirm_durable(client, replicas=1, timeout_ms=5000)
            async with aioredis.Redis.from_url(replica.url) as follower:
                assert await follower.xlen("nft:ack") == 2
    finally:
        await replica.kill()
        await primary.kill()
