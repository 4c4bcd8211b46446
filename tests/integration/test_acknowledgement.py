import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from infra.redis_client import NotDurable, durably
from tests.private_redis import PrivateRedis

APPEND = "return redis.call('XADD', KEYS[1], '*', 'v', ARGV[1])"


async def test_wait_for_replicas_before_acknowledging(tmp_path: Path) -> None:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = PrivateRedis(tmp_path / "primary")
    await primary.start()
    replica = PrivateRedis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    try:
        async with aioredis.Redis.from_url(primary.url) as client:
            append = client.register_script(APPEND)
            # No replica yet: the write happened, but it must not be reported as durable.
            with pytest.raises(NotDurable):
                await durably(client, 1, 200, append, ["nft:ack"], ["1"])
            await durably(client, 0, 200, append, ["nft:ack"], ["2"])  # the default: no wait
            await replica.start()
            async with aioredis.Redis.from_url(replica.url) as follower:
                for _ in range(200):
                    if (await follower.info("replication")).get("master_link_status") == "up":
                        break
                    await asyncio.sleep(0.05)
                await durably(client, 1, 5000, append, ["nft:ack"], ["3"])
                assert await follower.xlen("nft:ack") == 3
    finally:
        await replica.kill()
        await primary.kill()
