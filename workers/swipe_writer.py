import gc
import logging
from datetime import timedelta

import asyncpg

from domain.events import MatchCreated
from infra.broadcast import make_broadcast
from infra.db import open_pool
from infra.events import UserChannels
from infra.pg_fences import PgFences
from infra.pg_relations import apply_swipes, likes_among, mark_announced, match_likes
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import PartitionedConsumer, ensure_groups
from infra.swipe_queue import SWIPE_WRITER, RedisSwipeQueue, decode_fields, swipes_spec
from workers import new_consumer_id, stop_on_signals

log = logging.getLogger(__name__)

# Entries per read and per transaction: a batch pays a fixed cost (two transactions, statements over
# all 100 swipe partitions, three commits, a few Redis round trips), so a backlog drains faster in big
# batches: 10,000 drained 100,000 swipes over 16 partitions 3-10% faster than 5,000 (bench/swipes.py,
# side by side), and Redis runs each batch's scripts in one go.
BATCH_SIZE = 10_000
# Every entry leaves a few small objects alive until its batch commits; at the default threshold
# (700) the collector would run every few dozen entries and walk the batch again each time. With 16
# partitions' batches in flight, 20,000 still meant a collection every few thousand entries (a tenth
# of the writer's CPU); the writer makes little cyclic garbage for a higher one to hold on to.
GC_THRESHOLD = (100_000, 10, 10)


class SwipeWriter:
    """Applies accepted swipes to PostgreSQL in batches, then announces the matches they made."""

    def __init__(self, pool: asyncpg.Pool, queue: RedisSwipeQueue, channels: UserChannels, fences: PgFences) -> None:
        self._pool = pool
        self._queue = queue
        self._channels = channels
        self._fences = fences

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, str]]) -> None:
        entries = [raw for _, raw in batch]
        async with self._pool.acquire() as conn:
            try:
                inserted = await self._apply(conn, partition, fence, entries, again=False)
            except asyncpg.UniqueViolationError:
                # Some were written before: a batch redelivered after a crash, or a swipe twice.
                inserted = await self._apply(conn, partition, fence, entries, again=True)
            # Only once the likes are committed: see match_likes.
            likes, unannounced = likes_among(entries), []
            if likes:
                async with conn.transaction():
                    await self._fences.claim(conn, SWIPE_WRITER, partition, fence)
                    unannounced = await match_likes(conn, likes, inserted=inserted)
        if unannounced:
            # After the commit: a crash before the flag is set re-announces on redelivery (at least
            # once; clients recognise a match by its id). Without a connection held meanwhile: the
            # other partitions' batches wait for one while Redis takes the announcements.
            await self._channels.publish_many([
                MatchCreated(side, match.id, other, match.created_at) for match in unannounced
                for side, other in ((match.user_id, match.other_id), (match.other_id, match.user_id))])
            await mark_announced(self._pool, unannounced)
        await self._queue.forget(partition, entries)

    async def _apply(self, conn: asyncpg.Connection, partition: int, fence: int, entries: list[str], *,
                     again: bool) -> bool:
        async with conn.transaction():
            await self._fences.claim(conn, SWIPE_WRITER, partition, fence)
            return await apply_swipes(conn, entries, again=again)


async def main(settings: Settings) -> None:
    gc.set_threshold(*GC_THRESHOLD)
    stop = stop_on_signals()
    spec = swipes_spec(settings.redis_prefix, settings.swipe_partitions)
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=4) as pool, make_broadcast(settings.redis_url) as bus:
            await ensure_groups(redis, spec)
            queue = RedisSwipeQueue(redis, spec, undo_window=timedelta(seconds=settings.undo_window_seconds))
            fences = PgFences(pool, spec.scope)
            writer = SwipeWriter(pool, queue, UserChannels(bus, settings.redis_prefix), fences)
            consumer_id = new_consumer_id()
            consumer = PartitionedConsumer(redis, spec, SWIPE_WRITER, consumer_id, decode_fields, writer, fences,
                                           batch_size=BATCH_SIZE, lease_seconds=settings.stream_lease_seconds)
            await consumer.run(stop=stop)
    finally:
        await redis.aclose()
