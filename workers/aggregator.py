import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infra.archive import Runs, Window, build_object, encode_window, group_into, object_key, runs_by_chat, windows_spec
from infra.archive_keys import PgArchiveKeys, Sealer
from infra.chat_log import CHAT_AGGREGATOR, chats_spec
from infra.db import open_pool
from infra.pg_archive import PgArchiveIndex, Position
from infra.pg_fences import PgFences
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import PartitionedConsumer, StreamSpec, append, ensure_groups, next_id
from infra.wal import Record, WriteAheadLog
from workers import new_consumer_id, stop_on_signals

log = logging.getLogger(__name__)

Pos = tuple[int, int]
GRACE_MS = 2000  # a window closes this long after its end, for entries stamped a moment before it
FILL_BATCH = 1000
ROOM_WAIT = 1.0


# 1 when the stream's entries from ARGV[1] to ARGV[2] are exactly the comma-separated ids of ARGV[3]:
# a batch just delivered then need not be read a second time to rebuild its partition.
_SAME_ENTRIES = """
local found, pos = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2]), 1
for _, entry in ipairs(found) do
  local stop = string.find(ARGV[3], ',', pos, true) or #ARGV[3] + 1
  if entry[1] ~= string.sub(ARGV[3], pos, stop - 1) then return 0 end
  pos = stop + 1
end
if pos <= #ARGV[3] then return 0 end
return 1
"""


class LogFull(Exception):
    pass


def pos(entry_id: str | bytes) -> Pos:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq)


def entry_id(position: Pos) -> str:
    return f"{position[0]}-{position[1]}"


def decode_entry(fields: dict[bytes, bytes]) -> bytes:
    return fields.get(b"m", b"")  # a chat closing (no message) still moves the partition's position on


@dataclass
class _Partition:
    fence: int
    base: str  # the archived position it was built on, then the last window handed on
    archived: str  # the archived position as last seen in PostgreSQL
    floor: int  # the earliest window an entry may still join (the ones before are handed on)
    last: Pos  # the newest entry held
    windows: dict[int, Runs] = field(default_factory=dict)  # window start -> its messages by chat
    lasts: dict[int, str] = field(default_factory=dict)  # window start -> its last entry id
    handed: list[str] = field(default_factory=list)  # last entries of windows handed on, not archived yet
    # The newest entry the stream was seen to hold: until it is taken, the partition is catching up,
    # and asking Redis again on every batch of a backlog would cost a round trip each.
    newest: Pos = (0, 0)


class Aggregator:
    """Keeps each owned partition's open window: every entry goes to the local log (durably, before it
    is acknowledged) and into memory; a closed window goes on to the archive writer as one object."""

    def __init__(self, redis: aioredis.Redis, chats: StreamSpec, windows: StreamSpec, wal: WriteAheadLog,
                 index: PgArchiveIndex, keys: PgArchiveKeys, *, window_ms: int, wal_max_bytes: int,
                 grace_ms: int = GRACE_MS, clock: Callable[[], float] = time.time) -> None:
        self._redis, self._chats, self._windows, self._wal, self._index = redis, chats, windows, wal, index
        self._keys = keys
        self._window_ms, self._grace_ms, self._wal_max, self._clock = window_ms, grace_ms, wal_max_bytes, clock
        self._parts: dict[int, _Partition] = {}
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._recovered: dict[int, dict[Pos, bytes]] = defaultdict(dict)
        self._rolled_at = clock()
        self._room = asyncio.Event()
        self._room.set()
        self._ticked: set[tuple[int, int]] = set()  # (partition, fence) pairs the last tick saw
        self._same_entries = redis.register_script(_SAME_ENTRIES)

    def recover(self, records: list[Record]) -> None:
        """What the log held at start: each partition's records come back when it is taken."""
        for record in records:
            self._recovered[record.key][record.position] = record.payload

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, bytes]]) -> None:
        # S3 away for long: stop taking entries (they wait in the stream) rather than grow the log.
        if self._wal.size > self._wal_max:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), ROOM_WAIT)  # until a truncation makes room
            except TimeoutError:
                # Raised, the batch is retried with backoff, and a partition being left can go.
                raise LogFull(f"{self._wal.size} bytes in the log wait for the archive") from None
        async with self._locks[partition]:
            state = await self._ensure(partition, fence, batch)
            await self._take(partition, state, batch)
            # By time too: a partition that has caught up hands its window on now, not at the next tick.
            await self._hand_due(partition, state, by_time=True)

    async def _take(self, partition: int, state: _Partition, batch: list[tuple[str, bytes]]) -> None:
        # Whole batches at a time: every chat message passes here, so nothing is done per entry
        # that can be done once per batch (a batch is in stream order, and nearly always fresh).
        if not batch:
            return
        first = pos(batch[0][0])
        if first <= state.last:  # redelivered ones are held already
            batch = [entry for entry in batch if pos(entry[0]) > state.last]
            if not batch:
                return
            first = pos(batch[0][0])
        last = pos(batch[-1][0])
        self._wal.append_entries(partition, batch)
        await self._wal.sync()
        start = self._window_of(state, first)
        if start == self._window_of(state, last):
            group_into(state.windows.setdefault(start, {}), [raw for _, raw in batch])
            state.lasts[start] = batch[-1][0]
            state.last = last
        else:  # across a window's end
            for i, raw in batch:
                self._add(state, pos(i), i, raw)

    def _window_of(self, state: _Partition, position: Pos) -> int:
        return max(position[0] // self._window_ms * self._window_ms, state.floor)

    def _add(self, state: _Partition, position: Pos, entry: str, raw: bytes) -> None:
        start = self._window_of(state, position)
        group_into(state.windows.setdefault(start, {}), (raw,))
        state.lasts[start] = entry
        state.last = position

    async def _ensure(self, partition: int, fence: int, batch: list[tuple[str, bytes]] | None = None) -> _Partition:
        state = self._parts.get(partition)
        if state is not None and state.fence == fence:
            return state
        # Taken (again): what follows the archived position, from the log first, then from the stream
        # for whatever the log lacks (entries another owner acknowledged, or a log lost with its disk).
        archived = (await self._index.positions()).get(partition)
        base = archived.last_entry if archived else "0-0"
        floor = archived.window_start + self._window_ms if archived else 0
        state = _Partition(fence, base, base, floor, pos(base))
        self._parts.pop(partition, None)
        for position, raw in sorted(self._recovered.pop(partition, {}).items()):
            if position > state.last:
                self._add(state, position, entry_id(position), raw)
        key = self._chats.key(partition)
        # Only what the group has delivered already: whatever follows reaches this owner through its
        # own reads, and reading it here too would read it twice.
        while state.last < (delivered := await self._delivered(key)):
            # Up to the batch being handled first: it was just delivered, and need not be read again.
            before = batch is not None and len(batch) > 0 and state.last < pos(batch[0][0])
            found = cast(list[tuple[bytes, dict[bytes, bytes]]], await self._redis.xrange(
                key, f"({entry_id(state.last)}", f"({batch[0][0]}" if batch and before else entry_id(delivered),
                count=FILL_BATCH))
            if found:
                await self._take(partition, state, [(_text(i), decode_entry(f)) for i, f in found])
            elif batch and before:
                # All that precedes it is held: the batch follows, unless the stream has entries between its own.
                ids = [i for i, _ in batch]
                if await self._same_entries([key], [ids[0], ids[-1], ",".join(ids)]):
                    await self._take(partition, state, batch)
                batch = None
            else:
                break
            await self._hand_due(partition, state, by_time=False)
        # Only now: a state half rebuilt (Redis failed on the way) would miss what it did not reach.
        self._parts[partition] = state
        log.info("chat-aggregator: partition %d from %s, %d messages held", partition, base,
                 sum(len(run) for runs in state.windows.values() for run in runs.values()))
        return state

    async def _delivered(self, key: str) -> Pos:
        for group in await self._redis.xinfo_groups(key):
            if _text(group["name"]) == CHAT_AGGREGATOR:
                return pos(_text(group["last-delivered-id"]))
        return (0, 0)

    async def _hand_due(self, partition: int, state: _Partition, *, by_time: bool) -> None:
        if not state.lasts:
            return
        newest, now_ms = max(state.lasts), int(self._clock() * 1000)
        for start in sorted(state.lasts):
            # Older windows are closed by a newer entry; the newest one by time, but only once the
            # stream holds nothing newer: catching up a backlog, a window closed by time would be cut
            # into one object per batch. A full log closes it anyway, or it could never be emptied.
            if start == newest and not (
                    by_time and now_ms >= start + self._window_ms + self._grace_ms
                    and (self._wal.size > self._wal_max or await self._caught_up(partition, state))):
                return
            await self._hand(partition, state, start)

    async def _caught_up(self, partition: int, state: _Partition) -> bool:
        if state.last < state.newest:  # entries ids only grow: what was there is still to come
            return False
        newest = cast(list[tuple[bytes, Any]], await self._redis.xrevrange(self._chats.key(partition), count=1))
        if newest:
            state.newest = max(state.newest, pos(newest[0][0]))
        return state.newest <= state.last

    async def _hand(self, partition: int, state: _Partition, start: int) -> None:
        last = state.lasts[start]
        key = object_key(partition, start, last)
        by_chat = runs_by_chat(state.windows[start])
        data_keys = await self._keys.data_keys(list(by_chat))
        body, segments = await asyncio.to_thread(build_object, key, by_chat, data_keys)
        window = Window(start, state.base, last, state.fence, key, body if segments else b"", segments)
        await append(self._redis, self._windows, partition, encode_window(window))
        del state.windows[start], state.lasts[start]  # only once handed on: a failed append is retried
        state.base, state.floor = last, start + self._window_ms
        state.handed.append(last)

    async def tick(self, fences: dict[int, int]) -> None:
        """Closes windows whose time is up, forgets partitions left, follows the archive's position,
        and truncates the log up to it."""
        for partition in [p for p in self._parts if p not in fences]:
            del self._parts[partition]
        positions = await self._index.positions()
        seen, self._ticked = self._ticked, set(fences.items())
        # Side by side: windows closing together (the same end for every partition) would otherwise
        # wait for each other's object to be built and handed on.
        await asyncio.gather(*(self._tick_one(p, fence, positions.get(p), (p, fence) in seen)
                               for p, fence in fences.items()))
        await self._hold(positions, fences)
        if self._clock() - self._rolled_at >= self._window_ms / 1000 or self._wal.size > self._wal_max:
            self._rolled_at = self._clock()
            self._wal.roll()  # records of a window end up in few segments, truncated soon after it

        def done(partition: int, position: Pos) -> bool:
            archived = positions.get(partition)
            return archived is not None and position <= pos(archived.last_entry)

        self._wal.truncate(done)
        if self._wal.size <= self._wal_max:
            self._room.set()

    async def _tick_one(self, partition: int, fence: int, archived: Position | None, settled: bool) -> None:
        async with self._locks[partition]:
            state = self._parts.get(partition)
            if not settled and (state is None or state.fence != fence):
                # Just taken: its first batch is on its way and builds it without reading that batch
                # from the stream a second time; a partition with nothing to deliver is built next tick.
                return
            state = await self._ensure(partition, fence)
            # A look at the stream itself, now and then: whatever the last look saw cannot hold a
            # window open for ever, even if an entry it counted on never comes.
            state.newest = (0, 0)
            if not self._follow(state, archived):
                log.warning("chat-aggregator: partition %d archived past what was handed on; rebuilding", partition)
                del self._parts[partition]
                state = await self._ensure(partition, fence)
            await self._hand_due(partition, state, by_time=True)

    @staticmethod
    def _follow(state: _Partition, archived: Position | None) -> bool:
        now = archived.last_entry if archived else "0-0"
        if now == state.archived:
            return True
        if now not in state.handed:
            return False
        state.handed = state.handed[state.handed.index(now) + 1:]
        state.archived = now
        return True

    async def _hold(self, positions: dict[int, Position], fences: dict[int, int]) -> None:
        # The writer sets these after each commit; again here in case it died just after one.
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in fences:
                if partition in positions:
                    pipe.set(self._chats.hold_key(partition, CHAT_AGGREGATOR),
                             next_id(positions[partition].last_entry))
            await pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _ticking(aggregator: Aggregator, consumer: PartitionedConsumer[bytes], stop: asyncio.Event,
                   every: float) -> None:
    while not stop.is_set():
        try:
            await aggregator.tick(consumer.fences)
        except (RedisError, OSError) as error:
            log.warning("chat-aggregator: tick failed: %s", error)
        except Exception:
            log.exception("chat-aggregator: tick failed")
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


async def main(settings: Settings) -> None:
    stop = stop_on_signals()
    chats = chats_spec(settings.redis_prefix, settings.chat_partitions)
    windows = windows_spec(settings.redis_prefix, settings.chat_partitions)
    wal = WriteAheadLog(Path(settings.archive_wal_dir or settings.data_dir / "chat-wal"))
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=4) as pool:
            await ensure_groups(redis, chats)
            await ensure_groups(redis, windows)
            window_ms = max(1, int(settings.archive_window_seconds * 1000))
            keys = PgArchiveKeys(pool, Sealer.from_secret(settings.secret_key))
            aggregator = Aggregator(redis, chats, windows, wal, PgArchiveIndex(pool, chats.scope), keys,
                                    window_ms=window_ms, wal_max_bytes=settings.archive_wal_max_mb * 1024 * 1024,
                                    grace_ms=min(GRACE_MS, window_ms // 2))
            aggregator.recover(wal.open())
            consumer_id = new_consumer_id()
            consumer = PartitionedConsumer(redis, chats, CHAT_AGGREGATOR, consumer_id, decode_entry, aggregator,
                                           PgFences(pool, chats.scope), batch_size=1000,
                                           lease_seconds=settings.stream_lease_seconds)
            ticking = asyncio.create_task(_ticking(aggregator, consumer, stop, min(1.0, window_ms / 4000)))
            try:
                await consumer.run(stop=stop)
            finally:
                stop.set()
                await ticking
    finally:
        wal.close()
        await redis.aclose()
