import asyncio
import json
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from infra.app import Runtime
from infra.db import open_pool
from infra.metrics import REGISTRY
from infra.pg_fences import PgFences
from infra.redis_client import POOL_SIZE, open_redis
from infra.streams import PartitionedConsumer, StaleOwner, StreamSpec, append, ensure_groups
from tests.services import TestServices

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0  # upper bound for anything that should happen "soon"; passing runs take far less
SHORT_LEASE = 1.5

# A consumer in its own OS process; SIGTERM stops it cleanly.
CHILD = (
    "import asyncio, sys; from tests.integration.test_streams import child_main;"
    " asyncio.run(child_main(sys.argv[1]))"
)


def decode(fields: dict[bytes, bytes]) -> int:
    if b"seq" not in fields:
        raise ValueError("entry has no seq field")
    return int(fields[b"seq"])


# Applies entries idempotently (a batch applied but not acked before a crash comes back), fenced
# for real by PgFences.claim inside the same transaction.
class Recorder:

    def __init__(self, pool: asyncpg.Pool, group: str, consumer: str, delay: float = 0.0) -> None:
        self.pool, self.group, self.consumer, self.delay = pool, group, consumer, delay
        self.fences = PgFences(pool)
        self.gate: asyncio.Event | None = None  # when set up, every batch waits for it
        self.entered = asyncio.Event()
        self.batches = self.stale = 0
        self.seen_fences: set[int] = set()

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, int]]) -> None:
        self.batches += 1
        self.seen_fences.add(fence)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await self.fences.claim(conn, self.group, partition, fence)
            except StaleOwner:
                self.stale += 1
                raise
            await conn.executemany(
                "INSERT INTO stream_applied (group_name, partition, entry_id, seq, consumer, fence)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                [(self.group, partition, entry_id, seq, self.consumer, fence) for entry_id, seq in batch],
            )
        if self.delay:
            await asyncio.sleep(self.delay)


def make_consumer(
    redis: aioredis.Redis, spec: StreamSpec, group: str, recorder: Recorder, **options: float
) -> PartitionedConsumer[int]:
    return PartitionedConsumer(redis, spec, group, recorder.consumer, decode, recorder, recorder.fences,
                               **options)  # type: ignore[arg-type]


async def child_main(raw: str) -> None:
    args = json.loads(raw)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    spec = StreamSpec(args["name"], args["partitions"], args["prefix"], (args["group"],))
    redis = open_redis(args["redis_url"])
    try:
        async with open_pool(args["database_url"], max_size=4) as pool:
            recorder = Recorder(pool, args["group"], args["consumer"], delay=args["delay"])
            consumer = make_consumer(redis, spec, args["group"], recorder, lease_seconds=args["lease"],
                                     batch_size=args["batch"])
            await consumer.run(stop=stop)
    finally:
        await redis.aclose()


@pytest.fixture
async def pool(runtime: Runtime) -> AsyncIterator[asyncpg.Pool]:
    assert runtime.pool is not None
    await runtime.pool.execute(
        "CREATE TABLE IF NOT EXISTS stream_applied (group_name text, partition integer, entry_id text,"
        " seq integer NOT NULL, consumer text NOT NULL, fence bigint NOT NULL, applied bigserial,"
        " PRIMARY KEY (group_name, partition, entry_id))"
    )
    yield runtime.pool


def new_spec(services: TestServices, partitions: int, groups: int = 1) -> StreamSpec:
    token = secrets.token_hex(4)
    names = tuple(f"g{i}-{token}" for i in range(groups))
    return StreamSpec(f"s-{token}", partitions, services.redis_prefix, names)


async def fill(redis: aioredis.Redis, spec: StreamSpec, per_partition: int, start: int = 0) -> dict[int, list[str]]:
    ids: dict[int, list[str]] = {p: [] for p in range(spec.partitions)}
    for seq in range(start, start + per_partition):
        for partition in range(spec.partitions):
            ids[partition].append(await append(redis, spec, partition, {"seq": str(seq)}))
    return ids


async def applied(pool: asyncpg.Pool, group: str) -> dict[int, list[tuple[str, int]]]:
    rows = await pool.fetch(
        "SELECT partition, entry_id, seq FROM stream_applied WHERE group_name = $1 ORDER BY applied", group
    )
    found: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        found.setdefault(row["partition"], []).append((row["entry_id"], row["seq"]))
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def assert_all_applied_in_order(pool: asyncpg.Pool, group: str, ids: dict[int, list[str]]) -> None:
    # Rows are numbered in first-application order: each partition's must be its append order.
    found = await applied(pool, group)
    assert {p: [entry_id for entry_id, _ in rows] for p, rows in found.items()} == ids


async def pending_and_lag(redis: aioredis.Redis, spec: StreamSpec, group: str) -> tuple[int, int]:
    pending = lag = 0
    for partition in range(spec.partitions):
        for info in await redis.xinfo_groups(spec.key(partition)):
            if info["name"] == group.encode():
                pending += info["pending"]
                if "lag" in info:
                    lag += info["lag"] or 0
                else:  # Redis before 7.0 reports no lag: count what was never delivered
                    after = b"(" + info["last-delivered-id"]
                    lag += len(await redis.xrange(spec.key(partition), after, "+") or [])
    return pending, lag


async def lease_holders(redis: aioredis.Redis, spec: StreamSpec, group: str) -> list[str | None]:
    values = [await redis.get(spec.lease_key(p, group)) for p in range(spec.partitions)]
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def metric(name: str, spec: StreamSpec, group: str) -> float:
    return REGISTRY.get_sample_value(name, {"stream": spec.name, "group": group}) or 0.0


async def test_one_consumer_applies_everything_once_in_order(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices
) -> None:
    spec = new_spec(services, 8)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    await ensure_groups(redis, spec)  # idempotent
    ids = await fill(redis, spec, 40)
    recorder = Recorder(pool, group, "solo")
    consumer = make_consumer(redis, spec, group, recorder, batch_size=15)
    await asyncio.wait_for(consumer.run(until_idle=True), WAIT)

    await assert_all_applied_in_order(pool, group, ids)
    assert await pending_and_lag(redis, spec, group) == (0, 0)
    assert metric("stream_entries_handled_total", spec, group) == 320
    assert metric("stream_owned_partitions", spec, group) == 0
    assert await lease_holders(redis, spec, group) == [None] * 8
    assert not await redis.exists(spec.members_key(group))


async def test_two_consumers_in_one_process_split_the_partitions(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices
) -> None:
    spec = new_spec(services, 8)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    stop = asyncio.Event()
    first, second = (make_consumer(redis, spec, group, Recorder(pool, group, name), lease_seconds=SHORT_LEASE,
                                   batch_size=7) for name in ("a", "b"))
    runs = [asyncio.create_task(first.run(stop=stop))]
    await eventually(lambda: _true(len(first.owned) == 8))
    runs.append(asyncio.create_task(second.run(stop=stop)))

    async def split() -> bool:
        return len(first.owned) == len(second.owned) == 4 and not first.owned & second.owned
    await eventually(split)

    ids = await fill(redis, spec, 30)
    await eventually(lambda: _count(pool, group, 240))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*runs), WAIT)

    await assert_all_applied_in_order(pool, group, ids)
    by = await pool.fetch("SELECT consumer, count(*) FROM stream_applied WHERE group_name = $1 GROUP BY 1", group)
    assert {row["consumer"]: row["count"] for row in by} == {"a": 120, "b": 120}
    assert await pending_and_lag(redis, spec, group) == (0, 0)


async def _true(value: bool) -> bool:
    return value


async def _count(pool: asyncpg.Pool, group: str, expected: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM stream_applied WHERE group_name = $1", group) == expected


async def _spawn(services: TestServices, redis_url: str, spec: StreamSpec, consumer: str, delay: float,
                 batch: int) -> asyncio.subprocess.Process:
    args = {"name": spec.name, "partitions": spec.partitions, "prefix": spec.prefix, "group": spec.groups[0],
            "consumer": consumer, "redis_url": redis_url, "database_url": services.database_url,
            "lease": SHORT_LEASE, "delay": delay, "batch": batch}
    return await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, json.dumps(args), cwd=ROOT)


async def _reap(*processes: asyncio.subprocess.Process) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_two_consumer_processes_split_and_stop_cleanly(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices, redis_url: str
) -> None:
    spec = new_spec(services, 8)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    processes = [await _spawn(services, redis_url, spec, name, 0.0, 10) for name in ("p1", "p2")]
    try:
        async def split() -> bool:
            holders = await lease_holders(redis, spec, group)
            return holders.count("p1") == holders.count("p2") == 4
        await eventually(split)
        ids = await fill(redis, spec, 25)
        await eventually(lambda: _count(pool, group, 200))
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [await asyncio.wait_for(p.wait(), WAIT) for p in processes] == [0, 0]
    finally:
        await _reap(*processes)

    await assert_all_applied_in_order(pool, group, ids)
    by = await pool.fetch("SELECT DISTINCT consumer FROM stream_applied WHERE group_name = $1", group)
    assert {row["consumer"] for row in by} == {"p1", "p2"}
    assert await lease_holders(redis, spec, group) == [None] * 8
    assert await pending_and_lag(redis, spec, group) == (0, 0)


async def test_survivor_takes_over_a_killed_consumer(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices, redis_url: str
) -> None:
    spec = new_spec(services, 8)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    victim, survivor = [await _spawn(services, redis_url, spec, name, 0.05, 10) for name in ("victim", "survivor")]
    try:
        async def split() -> bool:
            holders = await lease_holders(redis, spec, group)
            return holders.count("victim") == holders.count("survivor") == 4
        await eventually(split)
        ids = await fill(redis, spec, 100)

        async def victim_started() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM stream_applied WHERE group_name = $1 AND consumer = 'victim'", group))
        await eventually(victim_started)
        victim.kill()
        killed_at = time.monotonic()
        assert not await _count(pool, group, 800), "the victim must die mid-flow"
        orphans = [await redis.xpending(spec.key(p), group) for p in range(spec.partitions)]
        assert any(c["name"] == b"victim" for o in orphans for c in o["consumers"]), "it left entries pending"

        async def taken_over() -> bool:
            return await lease_holders(redis, spec, group) == ["survivor"] * 8
        await eventually(taken_over)
        takeover = time.monotonic() - killed_at
        await eventually(lambda: _count(pool, group, 800))
        survivor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(survivor.wait(), WAIT) == 0
    finally:
        await _reap(victim, survivor)

    print(f"takeover after SIGKILL: {takeover:.2f} s (lease {SHORT_LEASE} s)")
    assert SHORT_LEASE * 0.5 < takeover < SHORT_LEASE * 3
    await assert_all_applied_in_order(pool, group, ids)
    assert await pending_and_lag(redis, spec, group) == (0, 0)


async def test_a_superseded_owner_is_fenced_off(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices
) -> None:
    spec = new_spec(services, 1)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    ids = await fill(redis, spec, 5)
    old, new = Recorder(pool, group, "old"), Recorder(pool, group, "new")
    old.gate = asyncio.Event()
    old_consumer, new_consumer = (make_consumer(redis, spec, group, r) for r in (old, new))
    stop_old, stop_new = asyncio.Event(), asyncio.Event()
    old_run = asyncio.create_task(old_consumer.run(stop=stop_old))
    new_run: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(old.entered.wait(), WAIT)  # the old owner holds a batch in flight
        (old_fence,) = old.seen_fences
        await redis.delete(spec.lease_key(0, group))  # its lease is gone, as after a long pause
        new_run = asyncio.create_task(new_consumer.run(stop=stop_new))
        await eventually(lambda: _count(pool, group, 5))
        old.gate.set()
        await eventually(lambda: _true(old.stale == 1 and not old_consumer.owned))
        await asyncio.sleep(0.2)
        assert old.batches == 1 and not old_consumer.owned
        assert await redis.get(spec.lease_key(0, group)) == b"new"
    finally:
        stop_old.set()
        stop_new.set()
        await asyncio.wait_for(asyncio.gather(old_run, *([new_run] if new_run else [])), WAIT)

    (new_fence,) = new.seen_fences
    assert new_fence > old_fence
    rows = await pool.fetch("SELECT DISTINCT consumer, fence FROM stream_applied WHERE group_name = $1", group)
    assert [(r["consumer"], r["fence"]) for r in rows] == [("new", new_fence)]
    await assert_all_applied_in_order(pool, group, ids)

    # Redis forgets its counter: the next fence still starts above what PostgreSQL remembers.
    assert await redis.delete(spec.fence_key(0, group)) == 1
    floor = await PgFences(pool).floor(group, 0)
    assert floor == new_fence
    await fill(redis, spec, 1, start=5)
    later = Recorder(pool, group, "later")
    await asyncio.wait_for(make_consumer(redis, spec, group, later).run(until_idle=True), WAIT)
    assert later.seen_fences == {floor + 1}
    assert await _count(pool, group, 6)


async def test_undecodable_entries_go_to_the_dead_letter_stream(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices
) -> None:
    spec = new_spec(services, 1)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    good = [await append(redis, spec, 0, {"seq": "0"})]
    bad = await append(redis, spec, 0, {"garbage": "x"})
    good += [await append(redis, spec, 0, {"seq": str(seq)}) for seq in (2, 3)]
    consumer = make_consumer(redis, spec, group, Recorder(pool, group, "c"))
    await asyncio.wait_for(consumer.run(until_idle=True), WAIT)

    await assert_all_applied_in_order(pool, group, {0: good})
    letters = await redis.xrange(spec.dead_key(0))
    assert letters is not None and len(letters) == 1
    letter = letters[0][1]
    assert letter is not None
    assert letter[b"garbage"] == b"x"
    assert letter[b"_original_id"] == bad.encode()
    assert letter[b"_error"] == b"ValueError: entry has no seq field"
    assert letter[b"_group"] == group.encode()
    assert metric("stream_dead_letters_total", spec, group) == 1
    assert await pending_and_lag(redis, spec, group) == (0, 0)


async def test_entries_are_trimmed_only_once_every_group_applied_them(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices
) -> None:
    spec = new_spec(services, 2, groups=2)
    first, second = spec.groups
    await ensure_groups(redis, spec)

    async def drain(group: str) -> None:
        consumer = make_consumer(redis, spec, group, Recorder(pool, group, group))
        await asyncio.wait_for(consumer.run(until_idle=True), WAIT)

    async def lengths() -> list[int]:
        return [await redis.xlen(spec.key(p)) for p in range(spec.partitions)]

    early = await fill(redis, spec, 10)
    await drain(second)
    assert await lengths() == [10, 10]  # the first group has applied nothing yet
    late = await fill(redis, spec, 10, start=10)
    await drain(first)
    assert await lengths() == [10, 10]  # the first ten are gone; the second group still needs the rest
    assert [entry_id for entry_id, _ in await redis.xrange(spec.key(0)) or []] == [i.encode() for i in late[0]]
    await drain(second)
    assert await lengths() == [0, 0]
    both = {p: early[p] + late[p] for p in early}
    await assert_all_applied_in_order(pool, first, both)
    await assert_all_applied_in_order(pool, second, both)


async def test_clean_stop_finishes_the_batch_and_releases_at_once(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices,
) -> None:
    spec = new_spec(services, 4)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    recorder = Recorder(pool, group, "stopper")
    recorder.gate = asyncio.Event()
    consumer = make_consumer(redis, spec, group, recorder)  # a long lease: expiry cannot explain release
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop=stop))
    await eventually(lambda: _true(len(consumer.owned) == 4))
    ids = await fill(redis, spec, 3)
    await asyncio.wait_for(recorder.entered.wait(), WAIT)
    stop.set()
    await asyncio.sleep(0.2)
    assert not run.done()  # the batch in flight is finished first
    in_flight = [p for p, holder in enumerate(await lease_holders(redis, spec, group)) if holder]
    assert in_flight and set(in_flight) == consumer.owned
    stopped_at = time.monotonic()
    recorder.gate.set()
    await asyncio.wait_for(run, WAIT)
    assert time.monotonic() - stopped_at < 1.0

    assert await lease_holders(redis, spec, group) == [None] * 4
    assert await redis.zscore(spec.members_key(group), "stopper") is None
    assert await pending_and_lag(redis, spec, group) == (0, sum(len(v) for v in ids.values())
                                                         - await _applied_count(pool, group))
    await asyncio.wait_for(make_consumer(redis, spec, group, recorder).run(until_idle=True), WAIT)
    await assert_all_applied_in_order(pool, group, ids)


async def _applied_count(pool: asyncpg.Pool, group: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM stream_applied WHERE group_name = $1", group))


def test_partition_of_is_stable() -> None:
    spec = StreamSpec("swipes", 100, "nf:", ("w",))
    assert spec.key(7) == "nf:{swipes:7}"
    assert spec.dead_key(7) == "nf:{swipes:7}:dead"
    # Fixed values: a change here would move every key to another partition across a deploy.
    assert [spec.partition_of(k) for k in ("alice", "bob", "")] == [29, 42, 76]
    with pytest.raises(ValueError):
        spec.key(100)


async def test_blocked_reads_on_more_partitions_than_the_pool_holds_leave_its_commands_waiting_for_none(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices,
) -> None:
    # One consumer owning more partitions than its client has connections (POOL_SIZE), each with a
    # read blocked: lease renewals and acks through that client must still go at once.
    spec = new_spec(services, POOL_SIZE + 20)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    recorder = Recorder(pool, group, "wide")
    consumer = make_consumer(redis, spec, group, recorder, block_ms=2000)
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop=stop))
    try:
        await eventually(lambda: _true(len(consumer.owned) == spec.partitions))
        await asyncio.sleep(0.5)  # every partition's read is blocked now
        waits = []
        for _ in range(20):
            started = time.monotonic()
            await redis.ping()
            waits.append(time.monotonic() - started)
        assert max(waits) < 0.5, f"a command waited {max(waits) * 1000:.0f} ms behind blocked reads"
        ids = await fill(redis, spec, 1)
        await eventually(lambda: _count(pool, group, spec.partitions))
    finally:
        stop.set()
        await asyncio.wait_for(run, WAIT)
    await assert_all_applied_in_order(pool, group, ids)


async def test_without_postgresql_a_round_says_so_once_and_the_partitions_wait(
    redis: aioredis.Redis, pool: asyncpg.Pool, services: TestServices, caplog: pytest.LogCaptureFixture,
) -> None:
    spec = new_spec(services, 50)
    group = spec.groups[0]
    await ensure_groups(redis, spec)
    async with open_pool(services.database_url) as gone:
        pass  # a real pool, closed: every fence read fails as with PostgreSQL away
    recorder = Recorder(pool, group, "orphaned")
    recorder.fences = PgFences(gone)
    consumer = make_consumer(redis, spec, group, recorder, lease_seconds=SHORT_LEASE)
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop=stop))
    await asyncio.sleep(3 * SHORT_LEASE)
    stop.set()
    await asyncio.wait_for(run, WAIT)
    said = [r for r in caplog.records if r.name == "infra.streams" and "cannot take partitions" in r.getMessage()]
    assert consumer.owned == set() and said
    # A line a round (a round every third of a lease), not one for each of the 50 partitions.
    assert len(said) <= 12, len(said)
