"""Stored ranked lists: what a later page reads, from Redis or from the process that saved the list."""
import secrets
import uuid
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from domain.ranking import Ranked
from infra.buckets import RedisCandidateLists
from tests.services import TestServices

TTL = timedelta(hours=6)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(services: TestServices) -> str:
    return f"{services.redis_prefix}lists-{secrets.token_hex(3)}:"


def ranked(n: int) -> list[Ranked]:
    return [Ranked(uuid.uuid4(), i % 5, (), i % 2 == 0, i == 0, 0.0) for i in range(n)]


async def test_pages_read_the_same_from_the_saving_process_and_from_redis(redis: aioredis.Redis, prefix: str) -> None:
    viewer, entries = uuid.uuid4(), ranked(60)
    saver, other = RedisCandidateLists(redis, prefix), RedisCandidateLists(redis, prefix)
    await saver.save(viewer, "a-list", entries, TTL)
    for start, count in ((0, 25), (25, 25), (50, 25), (60, 25)):
        expected = (entries[start:start + count], 60)
        assert await saver.read(viewer, "a-list", start, count) == expected
        assert await other.read(viewer, "a-list", start, count) == expected
    # Nobody else's cursor names it, in memory as in Redis.
    for lists in (saver, other):
        assert await lists.read(uuid.uuid4(), "a-list", 0, 25) is None
        assert await lists.read(viewer, "another-list", 0, 25) is None


async def test_the_saving_process_keeps_a_list_no_longer_than_redis(redis: aioredis.Redis, prefix: str) -> None:
    viewer, entries, clock = uuid.uuid4(), ranked(30), Clock()
    saver = RedisCandidateLists(redis, prefix, clock=clock)
    await saver.save(viewer, "a-list", entries, TTL)
    ttl_ms = await redis.pttl(saver._key(viewer, "a-list"))
    assert TTL.total_seconds() * 1000 - 60_000 < ttl_ms <= TTL.total_seconds() * 1000
    await redis.delete(saver._key(viewer, "a-list"))  # as if expired a moment early
    clock.now += TTL.total_seconds() - 1
    assert await saver.read(viewer, "a-list", 0, 25) == (entries[:25], 30)  # still within the deadline
    clock.now += 1
    assert await saver.read(viewer, "a-list", 0, 25) is None  # past it: Redis answers, and has none
    assert not saver._kept


async def test_kept_lists_stay_within_their_budget(redis: aioredis.Redis, prefix: str) -> None:
    viewer = uuid.uuid4()
    lists = {f"list-{i}": ranked(100) for i in range(4)}
    size = 64 + 100 * 20
    saver = RedisCandidateLists(redis, prefix, kept_bytes=2 * size)
    for list_id, entries in lists.items():
        await saver.save(viewer, list_id, entries, TTL)
    assert saver._kept_bytes <= 2 * size and len(saver._kept) == 2
    # Lists pushed out are read from Redis, the same as ever.
    for list_id, entries in lists.items():
        assert await saver.read(viewer, list_id, 90, 25) == (entries[90:], 100)
    too_big = RedisCandidateLists(redis, prefix, kept_bytes=size - 1)
    await too_big.save(viewer, "big", lists["list-0"], TTL)
    assert not too_big._kept and await too_big.read(viewer, "big", 0, 5) == (lists["list-0"][:5], 100)
