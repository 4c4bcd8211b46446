import asyncio
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from domain.errors import Code, DomainError
from domain.presence import Sighting
from infra.tasks import stop_task

log = logging.getLogger(__name__)

BEAT_SECONDS = 10.0
# Three beats: a process that dies (or loses Redis) stops counting as a live connection this soon.
ONLINE_SECONDS = 30.0
REMEMBER_SECONDS = 8 * 24 * 3600  # past a week nobody is told more than "longer"


class RedisPresence:
    """Per process, one sweep for all its sockets rather than a timer per socket: every beat it
    renews, for each person connected here, this process's entry in their online set (scored by
    when it lapses) and their last-seen time. Arrivals and departures are written at once."""

    def __init__(self, redis: aioredis.Redis, prefix: str, beat_seconds: float = BEAT_SECONDS,
                 online_seconds: float = ONLINE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self._redis, self._prefix, self._clock = redis, prefix, clock
        self._beat, self._online_ms = beat_seconds, int(online_seconds * 1000)
        self._token = secrets.token_hex(8)  # this process's member in every online set
        self._live: Counter[uuid.UUID] = Counter()  # sockets per person in this process
        self._arrived: set[uuid.UUID] = set()
        self._left: set[uuid.UUID] = set()
        self._wake = asyncio.Event()

    def _keys(self, user_id: uuid.UUID) -> tuple[str, str]:
        base = f"{self._prefix}{{u:{user_id}}}"
        return f"{base}:online", f"{base}:seen"

    def connected(self, user_id: uuid.UUID) -> None:
        self._live[user_id] += 1
        if self._live[user_id] == 1:
            self._arrived.add(user_id)
            self._left.discard(user_id)
            self._wake.set()

    def disconnected(self, user_id: uuid.UUID) -> None:
        if self._live[user_id] > 1:
            self._live[user_id] -= 1
            return
        self._live.pop(user_id, None)
        self._arrived.discard(user_id)
        self._left.add(user_id)
        self._wake.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            await stop_task(task)
            # A clean shutdown frees its people at once rather than after ONLINE_SECONDS.
            self._left.update(self._live)
            self._live.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._flush(full=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(max(next_beat - loop.time(), 0)):
                    await self._wake.wait()
            self._wake.clear()
            full = loop.time() >= next_beat
            if full:
                next_beat = loop.time() + self._beat
            await self._flush(full)

    async def _flush(self, full: bool) -> None:
        present = list(self._live) if full else list(self._arrived)
        gone = list(self._left)
        if not present and not gone:
            return
        self._arrived.clear()
        self._left.clear()
        now_ms = int(self._clock() * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in present:
                    online, seen = self._keys(user)
                    pipe.zremrangebyscore(online, "-inf", now_ms)  # entries of processes that died
                    pipe.zadd(online, {self._token: now_ms + self._online_ms})
                    pipe.pexpire(online, self._online_ms)
                    pipe.set(seen, now_ms, ex=REMEMBER_SECONDS)
                for user in gone:
                    online, seen = self._keys(user)
                    pipe.zrem(online, self._token)
                    pipe.set(seen, now_ms, ex=REMEMBER_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as error:
            # Tried again at the next beat; meanwhile people lapse to offline, never the reverse.
            log.warning("presence not written (%s): %d arrivals, %d departures", error, len(present), len(gone))
            self._arrived.update(u for u in present if u in self._live)
            self._left.update(u for u in gone if u not in self._live)

    async def sightings(self, user_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, Sighting]:
        now_ms = int(now.timestamp() * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in user_ids:
                    online, seen = self._keys(user)
                    pipe.zcount(online, now_ms, "+inf")
                    pipe.get(seen)
                replies = await pipe.execute()
        except (RedisError, OSError) as error:
            raise DomainError(Code.UNAVAILABLE, "Presence is briefly unavailable; try again") from error
        found = {}
        for i, user in enumerate(user_ids):
            count, seen_ms = replies[2 * i], replies[2 * i + 1]
            last = None if seen_ms is None else datetime.fromtimestamp(int(seen_ms) / 1000, UTC)
            found[user] = Sighting(int(count) > 0, last)
        return found
