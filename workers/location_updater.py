import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from domain.ranking import Listing
from infra.buckets import RedisBuckets
from infra.db import open_pool
from infra.metrics import REGISTRY
from infra.pg_locations import Change, done, queue_everyone, queue_inactive, take_changes
from infra.redis_client import open_redis
from infra.settings import Settings
from workers import stop_on_signals

log = logging.getLogger(__name__)

APPLIED = Counter("location_changes_applied", "Discovery changes applied to the buckets", registry=REGISTRY)
BACKLOG = Gauge("location_changes_queued", "Discovery changes waiting in PostgreSQL", registry=REGISTRY)
IDLE_POLL = 0.1


def plan(changes: list[Change]) -> tuple[list[tuple[str, Listing]], list[tuple[str, uuid.UUID]]]:
    listed: list[tuple[str, Listing]] = []
    unlisted: list[tuple[str, uuid.UUID]] = []
    for change in changes:
        keep = change.bucket if change.listing is not None else None
        if keep is not None and change.listing is not None:
            listed.append((keep, change.listing))
        for bucket in {change.old_bucket, change.bucket} - {None, keep}:
            unlisted.append((str(bucket), change.user_id))
    return listed, unlisted


class LocationUpdater:
    """Applies queued location and profile changes to the Redis buckets; resolvers never write them."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str, *, batch: int = 1000,
                 inactive_after: timedelta = timedelta(days=30), sweep_every: float = 600.0) -> None:
        self._pool = pool
        self._redis = redis
        self._buckets = RedisBuckets(redis, prefix)
        self._built_key = f"{prefix}discovery:built"
        self._batch = batch
        self._inactive_after = inactive_after
        self._sweep_every = sweep_every

    async def apply_batch(self) -> int:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            changes = await take_changes(conn, self._batch, now, self._inactive_after)
            if not changes:
                return 0
            listed, unlisted = plan(changes)
            await self._buckets.apply(listed, unlisted)
            # Deleted only now: a crash before this commit replays the batch, which is harmless.
            await done(conn, changes, now)
        APPLIED.inc(len(changes))
        return len(changes)

    async def sweep(self) -> None:
        async with self._pool.acquire() as conn:
            # Redis may have lost everything (a restart without persistence): the buckets are
            # rebuilt from PostgreSQL, which holds every position.
            if not await self._redis.exists(self._built_key):
                queued = await queue_everyone(conn)
                await self._redis.set(self._built_key, datetime.now(UTC).isoformat())
                log.info("buckets (re)built: %d people queued", queued)
            gone = await queue_inactive(conn, datetime.now(UTC), self._inactive_after)
            if gone:
                log.info("%d inactive people leave the buckets", gone)
            BACKLOG.set(await conn.fetchval("SELECT count(*) FROM discovery_changes"))

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        next_sweep = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                await self.sweep()
                next_sweep = time.monotonic() + self._sweep_every
            try:
                applied = await self.apply_batch()
            except (asyncpg.PostgresError, OSError, RedisError) as error:
                log.warning("location updater: %r; retrying", error)
                applied = 0
                await asyncio.sleep(1)
            if applied:
                continue
            if until_idle:
                return
            try:
                await asyncio.wait_for(stop.wait(), IDLE_POLL)
            except TimeoutError:
                pass


async def main(settings: Settings) -> None:
    stop = stop_on_signals()
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=2) as pool:
            updater = LocationUpdater(pool, redis, settings.redis_prefix,
                                      inactive_after=timedelta(days=settings.inactive_days))
            await updater.run(stop)
    finally:
        await redis.aclose()
