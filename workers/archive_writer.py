import logging

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter

from infra.archive import ARCHIVE_WRITER, S3Objects, Window, decode_window, windows_spec
from infra.chat_log import CHAT_AGGREGATOR, chats_spec
from infra.db import open_pool
from infra.metrics import REGISTRY
from infra.pg_archive import PgArchiveIndex
from infra.pg_fences import PgFences
from infra.photo_store import s3_client
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import PartitionedConsumer, StreamSpec, ensure_groups, next_id
from workers import new_consumer_id, stop_on_signals

log = logging.getLogger(__name__)

OBJECTS = Counter("archive_objects_written", "Window objects committed to the archive (S3 and index)",
                  registry=REGISTRY)


class ArchiveWriter:
    """Writes each closed window as one S3 object, then its index and the partition's new position in
    one PostgreSQL transaction; only then may the chat stream drop what the window holds."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, chats: StreamSpec, index: PgArchiveIndex,
                 objects: S3Objects, fences: PgFences) -> None:
        self._pool, self._redis, self._chats, self._index = pool, redis, chats, index
        self._objects, self._fences = objects, fences

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, Window]]) -> None:
        for _, window in batch:
            await self._write(partition, fence, window)

    async def _write(self, partition: int, fence: int, window: Window) -> None:
        archived = (await self._index.positions()).get(partition)
        if (archived.last_entry if archived else "0-0") != window.prev:
            return  # written already (a window handed on twice), or built on a position since passed
        if window.segments:
            # An S3 failure raises: the consumer retries the same window, with backoff, until it goes.
            await self._objects.put(window.key, window.body)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fences.claim(conn, ARCHIVE_WRITER, partition, fence)
            written = await self._index.commit(conn, partition, window.prev, window.start, window.last,
                                               window.segments, CHAT_AGGREGATOR, window.fence)
        if written:
            if window.segments:
                OBJECTS.inc()
            await self._redis.set(self._chats.hold_key(partition, CHAT_AGGREGATOR), next_id(window.last))
        else:
            log.info("archive-writer: window %s of partition %d superseded; skipped", window.key, partition)


async def main(settings: Settings) -> None:
    stop = stop_on_signals()
    chats = chats_spec(settings.redis_prefix, settings.chat_partitions)
    windows = windows_spec(settings.redis_prefix, settings.chat_partitions)
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=4) as pool:
            await ensure_groups(redis, windows)
            objects = S3Objects(s3_client(settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key,
                                          settings.s3_region), settings.s3_bucket)
            fences = PgFences(pool, windows.scope)
            writer = ArchiveWriter(pool, redis, chats, PgArchiveIndex(pool, chats.scope), objects, fences)
            consumer_id = new_consumer_id()
            # Few windows per read: each one is a whole object.
            consumer = PartitionedConsumer(redis, windows, ARCHIVE_WRITER, consumer_id, decode_window, writer,
                                           fences, batch_size=4, lease_seconds=settings.stream_lease_seconds)
            await consumer.run(stop=stop)
    finally:
        await redis.aclose()
