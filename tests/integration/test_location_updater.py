import asyncio
import random
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from domain.geo import bucket_of, snap
from domain.locations import Whereabouts
from domain.ranking import Listing
from infra.app import Runtime
from infra.buckets import RedisBuckets
from infra.pg_locations import PgLocations
from tests.factories import make_users
from tests.services import TestServices
from workers.location_updater import LocationUpdater

# Real places, so cells and buckets fall where people actually live.
SHANGHAI, BERLIN, QUITO = (31.2304, 121.4737), (52.52, 13.405), (-0.1807, -78.4678)


@pytest.fixture
async def pool(runtime: Runtime) -> asyncpg.Pool:
    assert runtime.pool is not None
    return runtime.pool


@pytest.fixture
def prefix(services: TestServices) -> str:
    return f"{services.redis_prefix}loc-{secrets.token_hex(3)}:"


# Every bucket a test placed anyone in: where a stale listing could linger. Checking these beats
# scanning a Redis keyspace that other runs share.
TOUCHED: set[str] = set()


async def place(pool: asyncpg.Pool, user_id: uuid.UUID, lat: float, lon: float) -> str:
    cell = snap(lat, lon, 20)
    now = datetime.now(UTC)
    await PgLocations(pool).save(Whereabouts(user_id, cell, now), cell, bucket_of(cell), now)
    TOUCHED.add(bucket_of(cell))
    return cell


async def listed_in(redis: aioredis.Redis, prefix: str, user_id: uuid.UUID) -> list[str]:
    buckets = RedisBuckets(redis, prefix)
    candidates = sorted(TOUCHED)
    async with redis.pipeline(transaction=False) as pipe:
        for bucket in candidates:
            pipe.hexists(buckets.bucket_key(bucket), user_id.bytes)
        found = await pipe.execute()
    return [bucket for bucket, there in zip(candidates, found, strict=True) if there]


async def listing_of(redis: aioredis.Redis, prefix: str, user_id: uuid.UUID, cell: str) -> Listing:
    # Other tests' people may share the bucket (this updater applies every queued change).
    found = [x for x in await RedisBuckets(redis, prefix).listings([bucket_of(cell)]) if x.user_id == user_id]
    assert len(found) == 1, found
    return found[0]


async def drain(pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str, batch: int = 1000) -> None:
    await LocationUpdater(pool, redis, prefix, batch=batch).run(asyncio.Event(), until_idle=True)


async def test_positions_reach_the_buckets_and_follow_moves(pool: asyncpg.Pool, redis: aioredis.Redis,
                                                            prefix: str) -> None:
    (ann, _), (bob, _) = await make_users(pool, 2, tags=("hiking", "coffee"))
    ann_cell = await place(pool, ann, *SHANGHAI)
    await place(pool, bob, *BERLIN)
    await drain(pool, redis, prefix)
    assert await listed_in(redis, prefix, ann) == [bucket_of(ann_cell)]
    listing = await listing_of(redis, prefix, ann, ann_cell)
    assert listing.user_id == ann and listing.cell == ann_cell and listing.tags == ("hiking", "coffee")

    moved = await place(pool, ann, *QUITO)
    await drain(pool, redis, prefix)
    assert await listed_in(redis, prefix, ann) == [bucket_of(moved)]
    assert await pool.fetchval("SELECT bucket FROM discovery_listed WHERE user_id = $1", ann) == bucket_of(moved)


async def test_hidden_deleted_and_inactive_people_leave(pool: asyncpg.Pool, redis: aioredis.Redis,
                                                        prefix: str) -> None:
    users = [u for u, _ in await make_users(pool, 4)]
    for user in users:
        await place(pool, user, *BERLIN)
    await drain(pool, redis, prefix)
    hidden, deleted, inactive, stays = users
    await pool.execute("UPDATE users SET visibility = 'HIDDEN' WHERE id = $1", hidden)
    await pool.execute("UPDATE users SET deleted_at = now() WHERE id = $1", deleted)
    await pool.execute("UPDATE users SET last_active_at = now() - interval '31 days' WHERE id = $1", inactive)
    await drain(pool, redis, prefix)  # the first run sweeps for inactive people
    for gone in (hidden, deleted, inactive):
        assert await listed_in(redis, prefix, gone) == [], gone
    assert len(await listed_in(redis, prefix, stays)) == 1
    await pool.execute("UPDATE users SET visibility = 'VISIBLE' WHERE id = $1", hidden)
    await drain(pool, redis, prefix)
    assert len(await listed_in(redis, prefix, hidden)) == 1


async def test_a_crash_before_commit_replays_harmlessly(pool: asyncpg.Pool, redis: aioredis.Redis,
                                                        prefix: str) -> None:
    (ann, _), = await make_users(pool, 1)
    await place(pool, ann, *SHANGHAI)
    await drain(pool, redis, prefix)
    moved = await place(pool, ann, *BERLIN)
    updater = LocationUpdater(pool, redis, prefix)

    class Crash(Exception):
        pass

    async def crash(*_: object) -> None:
        raise Crash

    # Redis gets the change, then the process dies before PostgreSQL forgets it.
    import workers.location_updater as module
    real_done = module.done
    module.done = crash  # type: ignore[assignment]
    try:
        with pytest.raises(Crash):
            await updater.apply_batch()
    finally:
        module.done = real_done
    assert await pool.fetchval("SELECT count(*) FROM discovery_changes WHERE user_id = $1", ann) == 1
    await drain(pool, redis, prefix)
    assert await listed_in(redis, prefix, ann) == [bucket_of(moved)]


async def test_a_lost_redis_is_rebuilt_from_postgresql(pool: asyncpg.Pool, redis: aioredis.Redis,
                                                       prefix: str) -> None:
    (ann, _), = await make_users(pool, 1)
    cell = await place(pool, ann, *QUITO)
    await drain(pool, redis, prefix)
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await drain(pool, redis, prefix)
    assert await listed_in(redis, prefix, ann) == [bucket_of(cell)]


async def test_moves_during_updates_always_end_where_postgresql_says(pool: asyncpg.Pool, redis: aioredis.Redis,
                                                                     prefix: str) -> None:
    # Writers move people while two updaters apply in small batches: whatever interleaving, each
    # person ends listed exactly in the bucket of their last stored cell.
    people = [u for u, _ in await make_users(pool, 60)]
    rng = random.Random(7)
    cities = [SHANGHAI, BERLIN, QUITO, (40.7128, -74.006), (-33.8688, 151.2093), (35.6762, 139.6503)]
    last: dict[uuid.UUID, str] = {}
    stop = asyncio.Event()

    async def writer(share: list[uuid.UUID]) -> None:
        for _ in range(15):
            for person in share:
                lat, lon = rng.choice(cities)
                last[person] = await place(pool, person, lat + rng.uniform(-0.3, 0.3), lon + rng.uniform(-0.3, 0.3))
            await asyncio.sleep(0)

    updaters = [LocationUpdater(pool, redis, prefix, batch=7) for _ in range(2)]
    running = [asyncio.create_task(u.run(stop)) for u in updaters]
    await asyncio.gather(*(writer(people[i::3]) for i in range(3)))
    deadline = asyncio.get_running_loop().time() + 30
    while await pool.fetchval("SELECT count(*) FROM discovery_changes WHERE user_id = ANY($1::uuid[])", people):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*running)
    for person in people:
        assert await listed_in(redis, prefix, person) == [bucket_of(last[person])], person


async def test_activity_reaches_buckets_once_a_day(pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str) -> None:
    (ann, _), = await make_users(pool, 1)
    cell = await place(pool, ann, *BERLIN)
    await drain(pool, redis, prefix)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0)
    await pool.execute("UPDATE users SET last_active_at = $2 WHERE id = $1", ann, yesterday)
    await drain(pool, redis, prefix)
    assert (await listing_of(redis, prefix, ann, cell)).active_on == yesterday.date()
    # Later the same day: no change is queued at all.
    await pool.execute("UPDATE users SET last_active_at = $2 WHERE id = $1", ann, yesterday + timedelta(minutes=1))
    assert await pool.fetchval("SELECT count(*) FROM discovery_changes WHERE user_id = $1", ann) == 0
    await pool.execute("UPDATE users SET show_activity = false WHERE id = $1", ann)
    await drain(pool, redis, prefix)
    assert (await listing_of(redis, prefix, ann, cell)).active_on is None
