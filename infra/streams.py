import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError, ResponseError

from infra.metrics import REGISTRY
from infra.redis_client import NotDurable, pinned, raw_reader

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_POLL = 0.05  # until_idle: pause between empty non-blocking reads
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
REDIS_RETRY = 1.0
DEAD_LETTERS_KEPT = 10_000  # per partition: a broken producer must not fill Redis with them
_MAX_SEQ = 2**64 - 1


@dataclass(frozen=True)
class StreamSpec:
    name: str
    partitions: int
    prefix: str
    groups: tuple[str, ...]
    # Groups that acknowledge early but need entries kept longer: trimming stops at the id each one
    # leaves in its hold key (none yet: nothing is trimmed).
    held: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.partitions < 1 or not self.groups:
            raise ValueError("a stream needs at least one partition and one group")
        if not set(self.held) <= set(self.groups):
            raise ValueError("only a group of the stream can hold its entries")
        if "{" in self.name or "}" in self.name:
            raise ValueError("braces in a stream name would break its hash tags")

    def key(self, partition: int) -> str:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} outside 0..{self.partitions - 1}")
        # One hash tag per partition: all its keys live on one Redis Cluster slot.
        return f"{self.prefix}{{{self.name}:{partition}}}"

    def dead_key(self, partition: int) -> str:
        return f"{self.key(partition)}:dead"

    def lease_key(self, partition: int, group: str) -> str:
        return f"{self.key(partition)}:lease:{group}"

    def fence_key(self, partition: int, group: str) -> str:
        return f"{self.key(partition)}:fence:{group}"

    def hold_key(self, partition: int, group: str) -> str:
        return f"{self.key(partition)}:hold:{group}"

    def members_key(self, group: str) -> str:
        return f"{self.prefix}{self.name}:members:{group}"

    @property
    def scope(self) -> str:
        return f"{self.prefix}{self.name}/"

    def partition_of(self, shard_key: str) -> int:
        # Python's hash() is salted per process; this one is the same everywhere, forever.
        digest = blake2b(shard_key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.partitions


class StaleOwner(Exception):
    """A newer owner of the partition took a higher fence: this one must stop touching it."""


class Fences(Protocol):
    async def floor(self, group: str, partition: int) -> int: ...

    # Records a freshly taken fence before any batch runs under it; raises StaleOwner when an equal
    # or higher one is already recorded, so no two owners ever hold the same fence.
    async def remember(self, group: str, partition: int, fence: int) -> None: ...


class BatchHandler(Protocol[T]):
    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, T]]) -> None: ...


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def next_id(entry_id: str) -> str:
    ms, seq = _id_key(entry_id)
    return f"{ms + 1}-0" if seq == _MAX_SEQ else f"{ms}-{seq + 1}"


async def append(
    redis: aioredis.Redis, spec: StreamSpec, partition: int, fields: Mapping[str, str | bytes], *,
    ack_replicas: int = 0, ack_timeout_ms: int = 500,
) -> str:
    key = spec.key(partition)
    values: dict[Any, Any] = dict(fields)
    if ack_replicas <= 0:
        return _text(await redis.xadd(key, values))
    # WAIT only covers writes made on its own connection: a pipeline sends both on one.
    async with (await pinned(redis, key)).pipeline(transaction=False) as pipe:
        pipe.xadd(key, values)
        pipe.execute_command("WAIT", ack_replicas, ack_timeout_ms)
        entry_id, confirmed = await pipe.execute()
    if int(confirmed) < ack_replicas:
        raise NotDurable(f"{confirmed} of {ack_replicas} replicas confirmed within {ack_timeout_ms} ms")
    return _text(entry_id)


async def ensure_groups(redis: aioredis.Redis, spec: StreamSpec) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(spec.partitions):
            for group in spec.groups:
                pipe.xgroup_create(spec.key(partition), group, id="0", mkstream=True)
        results = await pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
            raise result


async def trim(redis: aioredis.Redis, spec: StreamSpec, partition: int) -> int:
    # Everything read here only moves forward, so a stale reading trims less, never too much.
    key = spec.key(partition)
    try:
        groups = {_text(info["name"]): info for info in await redis.xinfo_groups(key)}
    except ResponseError:  # no stream yet
        return 0
    needed: list[str] = []
    for group in spec.groups:
        info = groups.get(group)
        if info is None:  # a group not created yet will want every entry
            return 0
        oldest = (await redis.xpending(key, group))["min"] if info["pending"] else None
        # MINID keeps ids >= its argument: the oldest pending entry, or the first never delivered.
        needed.append(_text(oldest) if oldest else next_id(_text(info["last-delivered-id"])))
    for group in spec.held:
        hold = await redis.get(spec.hold_key(partition, group))
        if hold is None:
            return 0
        needed.append(_text(hold))
    return int(await redis.xtrim(key, minid=min(needed, key=_id_key), approximate=False))


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


async def _wait_any(events: Iterable[asyncio.Event], seconds: float) -> None:
    waiting = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiting, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiting:
            waiter.cancel()


def _pairs(fields: list[bytes] | None) -> dict[bytes, bytes]:
    return dict(zip(fields[::2], fields[1::2], strict=False)) if fields else {}


@dataclass
class _Read(Generic[T]):
    good: list[tuple[str, T]]
    dead: list[tuple[str, dict[bytes, bytes], str]]
    last: str  # the last entry id read ("" for none), dead ones included


def _split(reply: Any, decode: Callable[[dict[bytes, bytes]], T]) -> _Read[T]:
    # XREADGROUP's reply as hiredis parsed it: {stream: entries} (RESP3) or [[stream, entries]] (RESP2),
    # an entry [id, [field, value, ...]], or [id, None] once deleted. Most entries have one field.
    # Decoded in the same pass, keeping nothing else of the reply: a batch lives across the handler's
    # awaits, and a tuple per entry holding its fields' dict lived that long too, thousands of them
    # reaching the garbage collector's oldest generation and bringing on its full collections.
    streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply or ()]
    read: _Read[T] = _Read([], [], "")
    keep = read.good.append  # hundreds of thousands a second: no lookups
    entry_id: str = ""
    for entries in streams:
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            pairs = {fields[0]: fields[1]} if fields is not None and len(fields) == 2 else _pairs(fields)
            try:
                keep((entry_id, decode(pairs)))
            except Exception as error:
                read.dead.append((entry_id, pairs, f"{type(error).__name__}: {error}"[:1000]))
    read.last = entry_id
    return read


# Lease and fence keys share the partition's hash tag, so taking both is one atomic step.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
return redis.call('INCR', KEYS[2])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Acknowledges the ids listed in ARGV[2], comma-separated: the client packs one argument instead of
# thousands (most of XACK's cost was on our side). unpack() is bounded by Lua's stack, hence chunks.
_ACK = """
local blob, ids, pos, acked = ARGV[2], {}, 1, 0
while pos <= #blob do
  local stop = string.find(blob, ',', pos, true) or #blob + 1
  ids[#ids + 1] = string.sub(blob, pos, stop - 1)
  pos = stop + 1
  if #ids == 1000 or pos > #blob then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
    ids = {}
  end
end
return acked
"""
# Redis's clock, not ours: members on different hosts compare ages on one clock.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2] * 3)
return redis.call('ZCARD', KEYS[1])
"""


@dataclass(frozen=True)
class _Metrics:
    handled: Counter
    dead: Counter
    lag: Gauge
    pending: Gauge
    owned: Gauge


_METRICS: dict[str, _Metrics] = {}


def _metrics(prefix: str) -> _Metrics:
    if prefix not in _METRICS:
        labels = ["stream", "group"]
        _METRICS[prefix] = _Metrics(
            Counter(f"{prefix}_entries_handled", "Stream entries applied", labels, registry=REGISTRY),
            Counter(f"{prefix}_dead_letters", "Undecodable entries moved aside", labels, registry=REGISTRY),
            Gauge(f"{prefix}_lag", "Entries not yet delivered, owned partitions", labels, registry=REGISTRY),
            Gauge(f"{prefix}_pending", "Entries delivered, not acked, owned partitions", labels, registry=REGISTRY),
            Gauge(f"{prefix}_owned_partitions", "Partitions leased by this process", labels, registry=REGISTRY),
        )
    return _METRICS[prefix]


@dataclass(eq=False)
class _Lease:
    partition: int
    fence: int
    renewed_at: float  # monotonic time the last successful renewal was sent
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False  # someone else may hold it now: do not release it
    idle: bool = False
    task: "asyncio.Task[None] | None" = None


class PartitionedConsumer(Generic[T]):
    def __init__(
        self, redis: aioredis.Redis, spec: StreamSpec, group: str, consumer_id: str,
        decode: Callable[[dict[bytes, bytes]], T], handle: BatchHandler[T], fences: Fences, *,
        batch_size: int = 500, lease_seconds: float = 10.0, block_ms: int = 500, metrics_prefix: str | None = None,
    ) -> None:
        if group not in spec.groups:
            raise ValueError(f"group {group!r} is not one of the stream's groups {spec.groups}")
        if not consumer_id:
            raise ValueError("consumer_id must not be empty")
        self._redis, self._spec, self._group, self._id = redis, spec, group, consumer_id
        self._decode, self._handle, self._fences = decode, handle, fences
        # An idle partition costs a read every block_ms, and a stop waits out one: a hundred idle
        # partitions read every 200 ms took half a core of a worker doing nothing.
        self._batch, self._block_ms = batch_size, block_ms
        self._lease_s, self._lease_ms = lease_seconds, max(1, int(lease_seconds * 1000))
        self._leases: dict[int, _Lease] = {}
        self._until_idle = False
        self._went_idle = asyncio.Event()  # until_idle: a partition ran dry, time to look again
        # Reads go through a client of our own, with a connection for each partition's blocked read,
        # that leaves XREADGROUP's replies as hiredis parsed them: redis-py's reshaping (a dict and
        # two tuples per entry) cost the swipe writer more than checking the entries did.
        self._reader = raw_reader(redis, "XREADGROUP", spec.partitions + 2)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._ack = redis.register_script(_ACK)
        metrics = _metrics(metrics_prefix or "stream")
        labels = (spec.name, group)
        self._handled, self._dead = metrics.handled.labels(*labels), metrics.dead.labels(*labels)
        self._lag_gauge, self._pending_gauge = metrics.lag.labels(*labels), metrics.pending.labels(*labels)
        self._owned_gauge = metrics.owned.labels(*labels)
        # Gauges move by deltas so several consumers in one process add up instead of overwriting.
        self._reported = (0, 0)

    @property
    def owned(self) -> set[int]:
        return set(self._leases)

    @property
    def fences(self) -> dict[int, int]:
        """The fence of each partition held and not being left."""
        return {p: lease.fence for p, lease in self._leases.items() if not lease.leave.is_set()}

    async def run(self, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
        stop = stop or asyncio.Event()
        self._until_idle = until_idle
        # Renewing three times per lease leaves two missed renewals before a lease can expire.
        interval, next_tick = self._lease_s / 3, 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + interval
                    await self._maintain()
                self._went_idle.clear()  # before looking: a partition running dry meanwhile wakes us
                if until_idle and await self._drained():
                    return
                pause = next_tick - time.monotonic()
                if until_idle:
                    await _wait_any((stop, self._went_idle), min(pause, IDLE_POLL))
                else:
                    await _wait(stop, pause)
        finally:
            await self._shutdown()

    # -- membership and leases ---------------------------------------------------------------

    async def _maintain(self) -> None:
        try:
            # Bounded: a slow PostgreSQL (a fence row locked by a stale owner) or a hung Redis must
            # not hold up the next round of renewals.
            async with asyncio.timeout(self._lease_s / 2):
                members = int(await self._heartbeat([self._spec.members_key(self._group)],
                                                    [self._id, self._lease_ms]))
                await self._renew_all()
                share = math.ceil(self._spec.partitions / max(members, 1))
                self._release_surplus(share)
                await self._acquire_free(share)
                await self._report()
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("%s/%s: maintenance failed: %r", self._spec.name, self._group, error)
        now = time.monotonic()
        for lease in self._leases.values():
            if not lease.lost and now - lease.renewed_at > self._lease_s:
                log.warning("%s/%s: lease on partition %d not renewed in time", self._spec.name, self._group,
                            lease.partition)
                lease.lost = True
                lease.leave.set()

    async def _renew_all(self) -> None:
        leases = [lease for lease in self._leases.values() if not lease.lost]
        if not leases:
            return
        sent = time.monotonic()
        async with self._redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                # EVAL, not the registered script: a cluster pipeline does not load scripts first.
                pipe.eval(_RENEW, 1, self._spec.lease_key(lease.partition, self._group), self._id, self._lease_ms)
            results = await pipe.execute()
        for lease, renewed in zip(leases, results, strict=True):
            if renewed:
                lease.renewed_at = sent
            else:
                log.warning("%s/%s: lease on partition %d was lost", self._spec.name, self._group, lease.partition)
                lease.lost = True
                lease.leave.set()

    def _release_surplus(self, share: int) -> None:
        staying = sorted(p for p, lease in self._leases.items() if not lease.leave.is_set())
        for partition in staying[share:]:
            # The partition task finishes its batch, acks, then releases: the newcomer takes it over.
            self._leases[partition].leave.set()

    async def _acquire_free(self, share: int) -> None:
        wanted = share - sum(not lease.leave.is_set() for lease in self._leases.values())
        candidates = [p for p in range(self._spec.partitions) if p not in self._leases]
        if wanted <= 0 or not candidates:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in candidates:
                pipe.exists(self._spec.lease_key(partition, self._group))
            taken = await pipe.execute()
        free = [p for p, held in zip(candidates, taken, strict=True) if not held]
        random.shuffle(free)  # consumers starting together then rarely race for the same ones
        while wanted > 0 and free:
            # All at once: taken one after another, each partition's fence would wait for a pool
            # connection behind the first batches of those taken before it.
            trying, free = free[:wanted], free[wanted:]
            results = await asyncio.gather(*(self._take(partition) for partition in trying), return_exceptions=True)
            wanted -= sum(result is True for result in results)
            for result in results:
                if isinstance(result, BaseException):
                    # Fences live in PostgreSQL: when it is away every partition would fail alike,
                    # so one line a round says so, and the rest wait for the next round.
                    log.warning("%s/%s: cannot take partitions: %r", self._spec.name, self._group, result)
                    return

    async def _take(self, partition: int) -> bool:
        lease_key = self._spec.lease_key(partition, self._group)
        started = time.monotonic()
        floor = await self._fences.floor(self._group, partition)
        fence = await self._acquire([lease_key, self._spec.fence_key(partition, self._group)],
                                    [self._id, self._lease_ms, floor])
        if fence is None:
            return False
        try:
            await self._fences.remember(self._group, partition, int(fence))
        except Exception as error:
            log.warning("%s/%s: fence %s for partition %d not recorded: %r", self._spec.name, self._group, fence,
                        partition, error)
            await self._release([lease_key], [self._id])
            return False
        lease = _Lease(partition, int(fence), started)
        self._leases[partition] = lease
        self._owned_gauge.inc()
        lease.task = asyncio.create_task(self._own(lease), name=f"{self._spec.key(partition)}/{self._group}")
        log.info("%s/%s: %s owns partition %d (fence %d)", self._spec.name, self._group, self._id, partition, fence)
        return True

    async def _own(self, lease: _Lease) -> None:
        try:
            await self._consume(lease)
        except StaleOwner:
            log.warning("%s/%s: fence %d on partition %d superseded; leaving it", self._spec.name, self._group,
                        lease.fence, lease.partition)
            lease.lost = True
        except Exception:
            log.exception("%s/%s: partition %d failed", self._spec.name, self._group, lease.partition)
        finally:
            del self._leases[lease.partition]
            self._owned_gauge.dec()
            if not lease.lost:
                try:
                    await self._release([self._spec.lease_key(lease.partition, self._group)], [self._id])
                except (RedisError, OSError) as error:  # it expires on its own
                    log.warning("%s/%s: release failed: %s", self._spec.name, self._group, error)

    # -- consuming one partition ------------------------------------------------------------------

    async def _consume(self, lease: _Lease) -> None:
        key = self._spec.key(lease.partition)
        while not lease.leave.is_set():
            try:
                await self._claim_orphans(key)
                # Our pending entries (the orphans included) all precede anything undelivered.
                cursor = "0"
                while not lease.leave.is_set():
                    read = _split(await self._read(key, cursor, None), self._decode)
                    if not read.last:
                        break
                    await self._process(lease, read)
                    cursor = read.last
                await self._follow(lease, key)
            except (RedisError, OSError) as error:
                log.warning("%s/%s: partition %d: %s", self._spec.name, self._group, lease.partition, error)
                await _wait(lease.leave, REDIS_RETRY)

    async def _claim_orphans(self, key: str) -> None:
        # We own the partition now: whatever others still hold pending is ours to finish.
        cursor = "0-0"
        while True:
            reply = await self._redis.xautoclaim(key, self._group, self._id, 0, cursor, count=self._batch)
            cursor = _text(reply[0])
            if cursor == "0-0":
                return

    async def _follow(self, lease: _Lease, key: str) -> None:
        while not lease.leave.is_set():
            if self._until_idle:
                read = _split(await self._read(key, ">", None), self._decode)
                if not read.last:
                    if not lease.idle:
                        lease.idle = True
                        self._went_idle.set()
                    await _wait(lease.leave, IDLE_POLL)
                    continue
            else:
                # Never interrupted, not even to leave: a node that has taken a blocked read may still
                # serve it after the client gave up, and what it delivered would sit pending under our
                # name until the next owner claimed it. Leaving waits out the block (block_ms) instead.
                read = _split(await self._read(key, ">", self._block_ms), self._decode)
                if not read.last:
                    continue
            lease.idle = False
            await self._process(lease, read)

    async def _read(self, key: str, cursor: str, block: int | None) -> Any:
        return await self._reader.xreadgroup(self._group, self._id, {key: cursor}, count=self._batch, block=block)

    async def _process(self, lease: _Lease, read: _Read[T]) -> None:
        good, dead = read.good, read.dead
        key = self._spec.key(lease.partition)
        if dead:
            await self._bury(lease.partition, dead)
            await self._ack([key], [self._group, ",".join([entry_id for entry_id, _, _ in dead])])
            self._dead.inc(len(dead))
        if good and await self._apply(lease, good):
            await self._ack([key], [self._group, ",".join([entry_id for entry_id, _ in good])])
            self._handled.inc(len(good))

    async def _apply(self, lease: _Lease, batch: list[tuple[str, T]]) -> bool:
        attempt = 0
        while True:
            try:
                await self._handle(lease.partition, lease.fence, batch)
                return True
            except StaleOwner:
                raise
            except Exception:
                attempt += 1
                log.exception("%s/%s: partition %d: batch from %s failed (attempt %d); retrying it",
                              self._spec.name, self._group, lease.partition, batch[0][0], attempt)
                # Skipping would break the partition's order: the same batch waits and runs again.
                if await _wait(lease.leave, min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)):
                    return False

    async def _bury(self, partition: int, dead: list[tuple[str, dict[bytes, bytes], str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, fields, error in dead:
                log.error("%s/%s: entry %s of partition %d cannot be decoded (%s); dead-lettered",
                          self._spec.name, self._group, entry_id, partition, error)
                extra = {b"_error": error, b"_original_id": entry_id, b"_group": self._group}
                letter: dict[Any, Any] = {**fields, **extra}
                pipe.xadd(self._spec.dead_key(partition), letter, maxlen=DEAD_LETTERS_KEPT, approximate=True)
            await pipe.execute()

    # -- reporting, idleness, shutdown ------------------------------------------------------------

    async def _report(self) -> None:
        lag = pending = 0
        for partition in list(self._leases):
            key = self._spec.key(partition)
            try:
                groups = await self._redis.xinfo_groups(key)
            except ResponseError:  # the stream is gone; its partition task reports why
                continue
            for info in groups:
                if _text(info["name"]) == self._group:
                    pending += int(info["pending"])
                    lag += await self._lag(key, info)
            await trim(self._redis, self._spec, partition)
        self._lag_gauge.inc(lag - self._reported[0])
        self._pending_gauge.inc(pending - self._reported[1])
        self._reported = (lag, pending)

    async def _lag(self, key: str, info: Mapping[str, Any]) -> int:
        if info.get("lag") is not None:
            return int(info["lag"])
        # Redis before 7.0 has no lag: count what follows the last delivery, up to a bound.
        after = "(" + _text(info["last-delivered-id"])
        return len(await self._redis.xrange(key, after, "+", count=1000) or [])

    async def _drained(self) -> bool:
        if any(not lease.idle for lease in self._leases.values()):
            return False
        others = [p for p in range(self._spec.partitions) if p not in self._leases]
        if not others:
            return True
        # A lone consumer must have taken every partition, not merely emptied the first few.
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in others:
                pipe.exists(self._spec.lease_key(partition, self._group))
            return all(await pipe.execute())

    async def _shutdown(self) -> None:
        held = list(self._leases.values())
        for lease in held:
            lease.leave.set()
        await asyncio.gather(*(lease.task for lease in held if lease.task), return_exceptions=True)
        try:
            await self._redis.zrem(self._spec.members_key(self._group), self._id)
            await self._trim_all(lease.partition for lease in held)
        except (RedisError, OSError) as error:
            log.warning("%s/%s: clean stop incomplete: %s", self._spec.name, self._group, error)
        self._lag_gauge.dec(self._reported[0])
        self._pending_gauge.dec(self._reported[1])
        self._reported = (0, 0)
        await self._reader.aclose()  # its own connections, opened again if run again

    async def _trim_all(self, partitions: Iterable[int]) -> None:
        await asyncio.gather(*(trim(self._redis, self._spec, partition) for partition in partitions))
