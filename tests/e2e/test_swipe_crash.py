"""Acceptance: swipe writers die by SIGKILL while 50,000 accepted swipes flow in, and the relation
tables still end up holding exactly what was accepted, with exactly one match per mutual like.

(a) one writer, killed again and again at random moments and restarted each time;
(b) two writers, one killed for good: the survivor takes over its partitions.

Swipes go in through RedisSwipeQueue.enqueue, the call whose return the API reports as "accepted",
on a stream prefix and with users of this test's own."""
import asyncio
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import cast

import asyncpg
import pytest
import redis.asyncio as aioredis

from domain.events import MatchCreated
from domain.swipes import Direction, Swipe
from infra.app import Runtime
from infra.events import decode
from infra.pg_relations import pair
from infra.settings import Settings
from infra.streams import StreamSpec
from infra.swipe_queue import SWIPE_WRITER, RedisSwipeQueue, decode_fields, swipes_spec
from infra.swipe_queue import decode as decode_entry
from tests.e2e.writers import WriterProcess, backlog, lease_holders, owned_by, still_pending
from tests.factories import make_users

USERS = 400
SWIPES = 50_000
RATE = 2_500  # swipes per second: the flow lasts ~20 s, long enough for several kills
ENQUEUERS = 50  # concurrent enqueueing tasks, as many API requests at once
PARTITIONS = 8
LEASE_SECONDS = 1.5  # a dead writer's partitions are free again this soon
MIN_KILLS = 5
WAIT = 60.0  # upper bound for anything that should happen "soon"; passing runs take far less


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@dataclass
class Stage:
    """One test's private stream, its users, and the swipes it will send."""

    settings: Settings
    prefix: str
    spec: StreamSpec
    redis: aioredis.Redis
    queue: RedisSwipeQueue
    pool: asyncpg.Pool
    users: list[uuid.UUID]
    planned: list[Swipe]
    rng: random.Random
    seed: int
    log_dir: Path
    accepted: list[Swipe] = field(default_factory=list)

    def writer(self, name: str) -> WriterProcess:
        return WriterProcess(self.settings, self.log_dir / f"{name}.log", REDIS_PREFIX=self.prefix,
                             SWIPE_PARTITIONS=str(PARTITIONS), STREAM_LEASE_SECONDS=str(LEASE_SECONDS))

    async def rows(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM swipes WHERE user_id = ANY($1)", self.users))


def plan(users: list[uuid.UUID], rng: random.Random, now: datetime) -> list[Swipe]:
    """SWIPES distinct swipes in random order: most pairs swipe both ways, so a quarter of those are
    mutual likes whose halves travel in different partitions at different times."""
    swipes: list[Swipe] = []
    pairs = [(a, b) for i, a in enumerate(users) for b in users[i + 1:]]
    rng.shuffle(pairs)
    for a, b in pairs:
        sides = [(a, b), (b, a)] if rng.random() < 0.6 else [rng.choice([(a, b), (b, a)])]
        for user, target in sides:
            # Whole milliseconds: the stream carries milliseconds, so the row must match exactly.
            at = datetime.fromtimestamp((round(now.timestamp() * 1000) + len(swipes)) / 1000, UTC)
            swipes.append(Swipe(user, target, rng.choice([Direction.LIKE, Direction.DISLIKE]), False, at))
        if len(swipes) >= SWIPES:
            break
    rng.shuffle(swipes)
    return swipes[:SWIPES]


@pytest.fixture
async def stage(settings: Settings, runtime: Runtime, tmp_path: Path) -> AsyncIterator[Stage]:
    assert runtime.pool is not None
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    prefix = f"{settings.redis_prefix}crash-{secrets.token_hex(3)}:"
    spec = swipes_spec(prefix, PARTITIONS)
    redis = aioredis.Redis.from_url(settings.redis_url)
    queue = RedisSwipeQueue(redis, spec, undo_window=timedelta(minutes=5))
    users = [uid for uid, _ in await make_users(runtime.pool, USERS)]
    try:
        yield Stage(settings, prefix, spec, redis, queue, runtime.pool, users, plan(users, rng, datetime.now(UTC)),
                    rng, seed, tmp_path)
    finally:
        await redis.aclose()


async def flow(stage: Stage) -> float:
    """Enqueues every planned swipe at RATE from ENQUEUERS tasks; returns how long it took."""
    started = time.monotonic()

    async def enqueuer(first: int) -> None:
        for i in range(first, len(stage.planned), ENQUEUERS):
            delay = started + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            swipe = stage.planned[i]
            accepted = await stage.queue.enqueue(swipe, (), None)
            # Nobody swiped this person before: the queue must take this swipe as it is.
            assert accepted == swipe, (swipe, accepted)
            stage.accepted.append(accepted)

    await asyncio.gather(*(enqueuer(i) for i in range(ENQUEUERS)))
    return time.monotonic() - started


@asynccontextmanager
async def match_announcements(stage: Stage) -> AsyncIterator[list[MatchCreated]]:
    """Every MatchCreated the writers publish on this stage's user channels."""
    pubsub = stage.redis.pubsub()
    heard: list[MatchCreated] = []
    subscribed = asyncio.Event()

    async def pump() -> None:
        async for message in pubsub.listen():
            if message["type"] == "psubscribe":
                subscribed.set()
            elif message["type"] == "pmessage":
                event = decode(message["data"].decode())
                if isinstance(event, MatchCreated):
                    heard.append(event)

    await pubsub.psubscribe(f"{stage.prefix}{{u:*}}:events")
    task = asyncio.create_task(pump())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        yield heard
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()


@dataclass(frozen=True)
class Kill:
    after_start: float  # seconds the killed process had lived
    applied_unacked: int  # delivered entries it had already committed, not acked: must not apply twice
    unapplied: int  # delivered entries it had not committed: must not be lost


async def consumer_ids(stage: Stage, writer: WriterProcess) -> set[str]:
    return {h for h in await lease_holders(stage.redis, stage.spec) if h is not None and writer.holds(h)}


async def kill_mid_batch(stage: Stage, writer: WriterProcess, started: float) -> Kill:
    """Waits (up to a moment) for the writer to hold delivered, unacknowledged entries, SIGKILLs it,
    then sorts what it left pending into committed and not committed."""
    names = await consumer_ids(stage, writer)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        async with stage.redis.pipeline(transaction=False) as pipe:
            for partition in range(PARTITIONS):
                pipe.xpending(stage.spec.key(partition), SWIPE_WRITER)
            summaries = await pipe.execute()
        if any(c["name"].decode() in names and c["pending"] for s in summaries for c in s["consumers"]):
            break
        await asyncio.sleep(0.005)
    await writer.kill()
    lived = time.monotonic() - started
    left: list[Swipe] = []
    for partition in range(PARTITIONS):
        key = stage.spec.key(partition)
        for name in names:
            for item in await stage.redis.xpending_range(key, SWIPE_WRITER, "-", "+", 100_000, name):
                found = await stage.redis.xrange(key, item["message_id"], item["message_id"])
                for _, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", found):
                    entry = decode_entry(decode_fields(fields))
                    assert isinstance(entry, Swipe)
                    left.append(entry)
    applied = await stage.pool.fetchval(
        "SELECT count(*) FROM swipes WHERE (user_id, target_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
        [s.user_id for s in left], [s.target_id for s in left])
    return Kill(lived, int(applied), len(left) - int(applied))


async def drained(stage: Stage, flowing: "asyncio.Task[float]") -> bool:
    if flowing.done():
        flowing.result()  # an enqueue that failed fails the test here
        return await backlog(stage.redis, stage.spec) == (0, 0)
    return False


async def holding(stage: Stage, writer: WriterProcess) -> bool:
    return bool(await consumer_ids(stage, writer))


async def applying(stage: Stage, writer: WriterProcess, flowing: "asyncio.Task[float]", baseline: int) -> bool:
    if flowing.done() and await backlog(stage.redis, stage.spec) == (0, 0):
        return True  # nothing left to apply: there is no busy moment to wait for
    return bool(await consumer_ids(stage, writer)) and await stage.rows() > baseline


async def verify(stage: Stage, heard: list[MatchCreated]) -> dict[str, int]:
    """The tables hold exactly the accepted swipes and one match per mutual like, told to both sides."""
    accepted = {(s.user_id, s.target_id): s for s in stage.accepted}
    assert len(accepted) == len(stage.accepted) == SWIPES
    rows = await stage.pool.fetch(
        "SELECT user_id, target_id, direction, super_like, created_at FROM swipes WHERE user_id = ANY($1)",
        stage.users)
    found = Counter((r["user_id"], r["target_id"], r["direction"], r["super_like"], r["created_at"]) for r in rows)
    expected = Counter((s.user_id, s.target_id, s.direction.value, s.super_like, s.at) for s in accepted.values())
    lost, extra = expected - found, found - expected
    assert (sum(lost.values()), sum(extra.values())) == (0, 0), \
        f"seed {stage.seed}: (accepted swipes missing, rows never accepted); e.g. {list(lost)[:2]}, {list(extra)[:2]}"

    likes = {k for k, s in accepted.items() if s.direction is Direction.LIKE}
    mutual = {pair(a, b) for a, b in likes if (b, a) in likes}
    matches = await stage.pool.fetch(
        "SELECT low_id, high_id, id, notified FROM matches WHERE low_id = ANY($1) OR high_id = ANY($1)", stage.users)
    made = Counter((m["low_id"], m["high_id"]) for m in matches)
    assert (len(mutual - set(made)), len(set(made) - mutual), sum(made.values()) - len(made)) == (0, 0, 0), \
        f"seed {stage.seed}: (mutual likes without a match, matches without a mutual like, doubled matches)"
    assert all(m["notified"] for m in matches)
    sides = await stage.pool.fetch("SELECT user_id, match_id, other_id FROM user_matches WHERE user_id = ANY($1)",
                                   stage.users)
    expected_sides = [(m[a], m["id"], m[b]) for m in matches for a, b in (("low_id", "high_id"), ("high_id", "low_id"))]
    assert len(sides) == len(expected_sides) and set(expected_sides) == {tuple(s) for s in sides}

    # A crash between announcing and recording it announces again (at least once); never a wrong
    # match, and never nobody.
    users = set(stage.users)
    told = Counter((e.user_id, e.match_id, e.other_id) for e in heard if e.user_id in users)
    assert (len(set(expected_sides) - set(told)), len(set(told) - set(expected_sides))) == (0, 0), \
        f"seed {stage.seed}: (sides never told, told of a match that is not theirs)"

    assert await backlog(stage.redis, stage.spec) == (0, 0)
    targets: dict[uuid.UUID, list[uuid.UUID]] = {}
    for s in stage.accepted:
        targets.setdefault(s.user_id, []).append(s.target_id)
    assert await still_pending(stage.queue, targets) == 0, "the queue still answers for written swipes"
    dead = sum([await stage.redis.xlen(stage.spec.dead_key(p)) for p in range(PARTITIONS)])
    assert dead == 0
    return {"rows": len(rows), "matches": len(matches), "announcements": sum(told.values()),
            "repeated": sum(told.values()) - len(told)}


async def test_a_writer_killed_again_and_again_loses_and_doubles_nothing(stage: Stage) -> None:
    writer = stage.writer("writer")
    kills: list[Kill] = []
    async with match_announcements(stage) as heard:
        await writer.start()
        started = time.monotonic()
        flowing = asyncio.create_task(flow(stage))
        try:
            while len(kills) < MIN_KILLS or not flowing.done():
                # Kill only a writer that got going: one dying before it owns anything tests little.
                working = partial(applying, stage, writer, flowing, await stage.rows())
                await until(working, "the restarted writer to apply swipes")
                await asyncio.sleep(stage.rng.uniform(0.0, 0.8))
                kills.append(await kill_mid_batch(stage, writer, started))
                await writer.start()
                started = time.monotonic()
            took = flowing.result()
            await until(lambda: drained(stage, flowing), "the last writer to drain the streams")
            # The last kill may leave nothing to drain: the restarted writer must still get going
            # (hold its partitions), or the SIGTERM below lands before its handler exists.
            await until(partial(holding, stage, writer), "the last writer to take its partitions")
            await asyncio.sleep(0.5)  # announcements already on the wire arrive
        finally:
            flowing.cancel()
            code = await writer.stop()
    assert code == 0, writer.log_tail()

    numbers = await verify(stage, heard)
    print(f"\nseed {stage.seed}: {SWIPES} accepted in {took:.1f} s, {len(kills)} SIGKILLs "
          f"(lived {[round(k.after_start, 1) for k in kills]} s; committed-unacked "
          f"{[k.applied_unacked for k in kills]}, uncommitted {[k.unapplied for k in kills]}); {numbers}")
    assert writer.starts == len(kills) + 1
    # The kills must have cut batches off on both sides of their commit, or this test proved nothing
    # about redelivering what was applied already (doubles) and what was not (losses).
    assert sum(k.applied_unacked for k in kills) > 0 and sum(k.unapplied for k in kills) > 0, kills


async def test_the_survivor_takes_over_a_writer_that_never_comes_back(stage: Stage) -> None:
    victim, survivor = stage.writer("victim"), stage.writer("survivor")
    async with match_announcements(stage) as heard:
        await victim.start()
        await survivor.start()
        started = time.monotonic()
        flowing = asyncio.create_task(flow(stage))
        try:
            async def split() -> bool:
                owned = await owned_by(stage.redis, stage.spec, [victim, survivor])
                return all(owned) and sum(map(len, owned)) == PARTITIONS
            await until(split, "both writers to own partitions")

            async def well_underway() -> bool:
                return await stage.rows() >= SWIPES // 5
            await until(well_underway, "a fifth of the swipes to be written")
            await asyncio.sleep(stage.rng.uniform(0.0, 1.0))
            before = (await owned_by(stage.redis, stage.spec, [victim]))[0]
            kill = await kill_mid_batch(stage, victim, started)
            killed_at = time.monotonic()

            async def taken_over() -> bool:
                return (await owned_by(stage.redis, stage.spec, [survivor]))[0] == set(range(PARTITIONS))
            await until(taken_over, "the survivor to own every partition", 10 * LEASE_SECONDS)
            takeover = time.monotonic() - killed_at
            assert not flowing.done(), "the flow ended before the takeover: the test needs more swipes or speed"
            took = await flowing
            await until(lambda: drained(stage, flowing), "the survivor to drain the streams")
            await asyncio.sleep(0.5)
        finally:
            flowing.cancel()
            code = await survivor.stop()
    assert code == 0, survivor.log_tail()

    numbers = await verify(stage, heard)
    print(f"\nseed {stage.seed}: {SWIPES} accepted in {took:.1f} s; victim owned {sorted(before)}, killed with "
          f"{kill.applied_unacked} committed-unacked and {kill.unapplied} uncommitted entries; survivor owned all "
          f"{PARTITIONS} partitions {takeover:.1f} s later (lease {LEASE_SECONDS} s); {numbers}")
    assert before, "the victim owned nothing when it was killed"
    assert takeover < 4 * LEASE_SECONDS
    assert survivor.starts == 1 and victim.starts == 1
