import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from domain.events import PhotoChanged
from domain.photos import Rejection, Size, public_key, upload_key
from domain.ports import EventPublisher
from infra.broadcast import make_broadcast
from infra.db import open_pool
from infra.events import UserChannels
from infra.images import process
from infra.metrics import REGISTRY
from infra.pg_photos import NOTIFY_CHANNEL, Job, drop_garbage, finish, sweep, take_garbage, take_jobs
from infra.photo_store import S3Photos, photo_store
from infra.settings import Settings
from workers import stop_on_signals

log = logging.getLogger(__name__)

DONE = Counter("photos_processed", "Photos processed, by outcome", ["outcome"], registry=REGISTRY)
# Each photo in flight may hold a decoded 50-megapixel image (~200 MB): a small batch bounds memory.
BATCH = 2
MAX_ATTEMPTS = 3
KEEP_REJECTED = timedelta(days=7)
IDLE_POLL = 1.0
_TRANSIENT = (asyncpg.PostgresError, OSError, BotoCoreError, ClientError)


class PhotoWorker:
    """Turns confirmed uploads into public renditions, or rejects them; deletes objects no row needs."""

    def __init__(self, pool: asyncpg.Pool, store: S3Photos, events: EventPublisher, *,
                 lease: timedelta = timedelta(minutes=2), sweep_every: float = 60.0) -> None:
        self._pool = pool
        self._store = store
        self._events = events
        self._lease = lease
        self._sweep_every = sweep_every

    async def process_batch(self) -> int:
        jobs = await take_jobs(self._pool, BATCH, self._lease, datetime.now(UTC))
        outcomes = await asyncio.gather(*(self._handle(job) for job in jobs), return_exceptions=True)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # Left leased: another attempt comes when the lease runs out.
                log.warning("photo %s: %r; will retry", job.photo_id, outcome)
        return len(jobs)

    async def _handle(self, job: Job) -> None:
        rejection, renditions = await self._render(job)
        if await finish(self._pool, job, rejection, renditions, datetime.now(UTC)):
            DONE.labels("ready" if rejection is None else rejection.value.lower()).inc()
            await self._events.publish(PhotoChanged(job.user_id, job.photo_id))

    async def _render(self, job: Job) -> tuple[Rejection | None, list[tuple[str, Size]]]:
        if job.attempt > MAX_ATTEMPTS:
            return Rejection.PROCESSING_FAILED, []
        data = await self._store.read(upload_key(job.user_id, job.photo_id), job.byte_size)
        if data is None:
            return Rejection.NOT_UPLOADED, []
        if len(data) > job.byte_size:
            return Rejection.FILE_TOO_LARGE, []
        outcome = await asyncio.to_thread(process, data)  # CPU-bound: off the loop
        if isinstance(outcome, Rejection):
            return outcome, []
        written = []
        for rendition in outcome:
            key = public_key(job.token, rendition.target)
            await self._store.put_public(key, rendition.jpeg, "image/jpeg")
            written.append((key, rendition.size))
        return None, written

    async def collect_garbage(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            keys = await take_garbage(conn, 1000)
            await self._store.delete_many(keys)
            await drop_garbage(conn, keys)
        return len(keys)

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        wake = asyncio.Event()

        def woken(*_: object) -> None:
            wake.set()

        async with self._pool.acquire() as listener:
            if not until_idle:
                # A confirmation wakes us at once; the poll only covers a missed notification.
                await listener.add_listener(NOTIFY_CHANNEL, woken)
            try:
                await self._loop(stop, wake, until_idle)
            finally:
                if not until_idle:
                    # Pooled connections are not reset on release (infra/db.py): unlisten ourselves.
                    await listener.remove_listener(NOTIFY_CHANNEL, woken)

    async def _loop(self, stop: asyncio.Event, wake: asyncio.Event, until_idle: bool) -> None:
        next_sweep = 0.0
        while not stop.is_set():
            wake.clear()
            try:
                if time.monotonic() >= next_sweep:
                    await sweep(self._pool, datetime.now(UTC), KEEP_REJECTED)
                    next_sweep = time.monotonic() + self._sweep_every
                busy = await self.process_batch() + await self.collect_garbage()
            except _TRANSIENT as error:
                log.warning("photo worker: %r; retrying", error)
                await asyncio.sleep(1)
                continue
            if busy:
                continue
            if until_idle:
                return
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waits, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()


async def main(settings: Settings) -> None:
    stop = stop_on_signals()
    store = photo_store(settings)
    await store.ensure_bucket()
    async with open_pool(settings.database_url, max_size=2 + BATCH) as pool, \
            make_broadcast(settings.redis_url) as bus:
        await PhotoWorker(pool, store, UserChannels(bus, settings.redis_prefix),
                          lease=timedelta(seconds=settings.photo_lease_seconds)).run(stop)
