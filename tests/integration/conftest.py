from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from infra.redis_client import open_redis
from tests.services import TestServices


# Tests that take this run twice: on the suite's Redis and on a local Redis Cluster.
@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, services: TestServices) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster"))
    return services.redis_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(redis_url)
    yield client
    await client.aclose()
