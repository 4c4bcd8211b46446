"""The swipe writer's pieces against the real PostgreSQL and Redis: the entry check, applying raw
entries in order, matching after the commit (and after a crash), the undo guard, the pending map."""
import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

from domain.swipes import Direction, Match, Swipe, Undo
from infra.app import Runtime
from infra.pg_relations import apply_swipes, likes_among, mark_announced, match_likes
from infra.swipe_queue import RedisSwipeQueue, decode, decode_fields, encode, swipes_spec
from tests.services import TestServices

START = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.fixture
async def pool(runtime: Runtime) -> asyncpg.Pool:
    assert runtime.pool is not None
    return runtime.pool


def like(user: uuid.UUID, target: uuid.UUID, ms: int = 0, *, super_like: bool = False) -> str:
    return encode(Swipe(user, target, Direction.LIKE, super_like, START + timedelta(milliseconds=ms)))


def dislike(user: uuid.UUID, target: uuid.UUID, ms: int = 0) -> str:
    return encode(Swipe(user, target, Direction.DISLIKE, False, START + timedelta(milliseconds=ms)))


def undo(user: uuid.UUID, target: uuid.UUID, ms: int = 0) -> str:
    return encode(Undo(user, target, START + timedelta(milliseconds=ms)))


async def write(pool: asyncpg.Pool, entries: list[str], *, again: bool = True) -> list[Match]:
    """What SwipeWriter does with a batch, minus fences and Redis."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            inserted = await apply_swipes(conn, entries, again=again)
        async with conn.transaction():
            return await match_likes(conn, likes_among(entries), inserted=inserted)


async def swipes_of(pool: asyncpg.Pool, user: uuid.UUID) -> dict[uuid.UUID, tuple[str, bool, datetime]]:
    rows = await pool.fetch("SELECT target_id, direction, super_like, created_at FROM swipes WHERE user_id = $1", user)
    return {r["target_id"]: (r["direction"], r["super_like"], r["created_at"]) for r in rows}


async def matches_between(pool: asyncpg.Pool, a: uuid.UUID, b: uuid.UUID) -> list[asyncpg.Record]:
    low, high = sorted((a, b))
    return await pool.fetch("SELECT * FROM matches WHERE low_id = $1 AND high_id = $2", low, high)


def people(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


def test_entries_are_checked_before_they_reach_postgresql() -> None:
    a, b = people(2)
    for raw in (like(a, b, super_like=True), dislike(a, b), undo(a, b)):
        assert decode_fields({b"e": raw.encode()}) == raw
        assert decode(raw) == decode(decode_fields({b"e": raw.encode()}))
    good = like(a, b)
    bad = [
        good.upper(), good.replace("|L|", "|X|"), good.replace("|L|0|", "|L|2|"), good + "|", good[:-1] + "x",
        good.rsplit("|", 1)[0] + "|" + "9" * 16, good.replace(str(a), str(a).replace("-", "")), good[1:],
        f"S|{a}|{b}|L|0", f"U|{a}|{b}", f"U|{a}|{b}|L|0|5", "not a swipe", "", good.replace(str(b)[:8], "zzzzzzzz"),
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            decode_fields({b"e": raw.encode()})
    with pytest.raises(KeyError):
        decode_fields({b"x": good.encode()})
    with pytest.raises(UnicodeDecodeError):
        decode_fields({b"e": b"S|\xff"})


async def test_entries_apply_in_order_with_undos_between(pool: asyncpg.Pool) -> None:
    a, b, c, d = people(4)
    await write(pool, [like(a, b, 1, super_like=True), undo(a, b, 2), dislike(a, c, 3), dislike(a, b, 4),
                       undo(a, c, 5), like(a, c, 6), like(a, d, 7, super_like=True)])
    assert await swipes_of(pool, a) == {
        b: ("DISLIKE", False, START + timedelta(milliseconds=4)),
        c: ("LIKE", False, START + timedelta(milliseconds=6)),
        d: ("LIKE", True, START + timedelta(milliseconds=7)),
    }
    # Received only for the super like that stayed.
    received = await pool.fetch("SELECT user_id, sender_id FROM super_likes_received WHERE sender_id = $1", a)
    assert [(r["user_id"], r["sender_id"]) for r in received] == [(d, a)]


async def test_a_batch_seen_before_fails_the_cheap_way_and_changes_nothing_the_other(pool: asyncpg.Pool) -> None:
    a, b, c = people(3)
    batch = [like(a, b, 1, super_like=True), dislike(a, c, 2)]
    assert await write(pool, batch, again=False) == []
    before = await swipes_of(pool, a)
    with pytest.raises(asyncpg.UniqueViolationError):
        await write(pool, batch, again=False)
    assert await write(pool, batch, again=True) == []
    assert await swipes_of(pool, a) == before
    assert await pool.fetchval("SELECT count(*) FROM super_likes_received WHERE sender_id = $1", a) == 1


@pytest.mark.parametrize("again", [False, True])
async def test_the_second_like_makes_one_match_its_writer_announces(pool: asyncpg.Pool, again: bool) -> None:
    a, b, c = people(3)
    assert await write(pool, [like(a, b, 1), like(a, c, 2)], again=again) == []
    made = await write(pool, [dislike(c, a, 3), like(b, a, 4)], again=again)
    assert [(m.user_id, m.other_id) for m in made] == [tuple(sorted((a, b)))]
    assert made[0].created_at == START + timedelta(milliseconds=4)
    assert uuid.UUID(str(made[0].id)).version == 7
    [row] = await matches_between(pool, a, b)
    assert (row["id"], row["notified"], row["low_completed"]) == (made[0].id, False, b < a)
    sides = await pool.fetch("SELECT user_id, other_id FROM user_matches WHERE match_id = $1", made[0].id)
    assert sorted((r["user_id"], r["other_id"]) for r in sides) == sorted([(a, b), (b, a)])

    # A crash before the announcement was recorded: replaying the batch announces it again, and only
    # its own batch does; the other side's batch, replayed, leaves it to the writer that made it.
    assert await write(pool, [dislike(c, a, 3), like(b, a, 4)]) == made
    assert await write(pool, [like(a, b, 1), like(a, c, 2)]) == []
    async with pool.acquire() as conn:
        await mark_announced(conn, made)
    assert await write(pool, [dislike(c, a, 3), like(b, a, 4)]) == []
    assert len(await matches_between(pool, a, b)) == 1


async def test_both_halves_in_one_batch_make_one_match(pool: asyncpg.Pool) -> None:
    a, b = people(2)
    batch = [like(a, b, 1), like(b, a, 2)]
    made = await write(pool, batch, again=False)
    assert len(made) == 1 and len(await matches_between(pool, a, b)) == 1
    assert await write(pool, batch) == made  # replayed before it was marked: announced again, once


async def test_a_like_undone_in_its_own_batch_makes_no_match(pool: asyncpg.Pool) -> None:
    a, b = people(2)
    await write(pool, [like(b, a, 1)])
    assert await write(pool, [like(a, b, 2), undo(a, b, 3)]) == []
    assert await matches_between(pool, a, b) == []
    made = await write(pool, [like(a, b, 4), undo(a, b, 5), like(a, b, 6)])
    assert len(made) == 1 and made[0].created_at == START + timedelta(milliseconds=6)


async def test_halves_committed_at_once_by_two_writers_make_exactly_one_match(pool: asyncpg.Pool) -> None:
    for _ in range(20):
        a, b = people(2)
        results = await asyncio.gather(write(pool, [like(a, b, 1)]), write(pool, [like(b, a, 2)]))
        assert sum(len(r) for r in results) == 1
        assert len(await matches_between(pool, a, b)) == 1


async def test_a_matched_like_cannot_be_undone(pool: asyncpg.Pool) -> None:
    a, b = people(2)
    await write(pool, [like(a, b, 1)])
    assert len(await write(pool, [like(b, a, 2)])) == 1
    await write(pool, [undo(a, b, 3)])
    assert a in {r["user_id"] for r in await pool.fetch("SELECT user_id FROM swipes WHERE target_id = $1", b)}


async def test_an_undo_racing_the_match_of_its_like_leaves_the_like(pool: asyncpg.Pool) -> None:
    a, b = people(2)
    await write(pool, [like(a, b, 1, super_like=True)])
    async with pool.acquire() as conn, conn.transaction():  # its match is made below, by hand, and held open
        await apply_swipes(conn, [like(b, a, 2)])
    async with pool.acquire() as matching, pool.acquire() as undoing:
        held = matching.transaction()
        await held.start()
        made = await match_likes(matching, [like(b, a, 2)])
        assert len(made) == 1

        async def undo_it() -> None:
            async with undoing.transaction():
                await apply_swipes(undoing, [undo(a, b, 3)])
        task = asyncio.create_task(undo_it())
        await asyncio.sleep(0.3)
        assert not task.done(), "the undo must wait for the match that holds its like"
        await held.commit()
        await asyncio.wait_for(task, 10)
    assert (await swipes_of(pool, a))[b] == ("LIKE", True, START + timedelta(milliseconds=1))
    assert await pool.fetchval("SELECT count(*) FROM super_likes_received WHERE user_id = $1 AND sender_id = $2",
                               b, a) == 1
    assert len(await matches_between(pool, a, b)) == 1


async def test_forget_drops_written_entries_only(redis: aioredis.Redis, services: TestServices) -> None:
    spec = swipes_spec(f"{services.redis_prefix}forget-{secrets.token_hex(3)}:", 1)
    queue = RedisSwipeQueue(redis, spec, undo_window=timedelta(minutes=5))
    a, b, c, d = people(4)
    pending = f"{spec.key(0)}:pending:{a}"
    written_b, newer_b = like(a, b, 1), like(a, b, 2)
    written_c, undone_c = dislike(a, c, 3), undo(a, c, 4)
    written_d = dislike(a, d, 5)
    tombstone = queue.tombstone(Undo(a, c, START + timedelta(milliseconds=4)))
    await redis.hset(pending, mapping={str(b): newer_b, str(c): tombstone, str(d): written_d})
    try:
        await queue.forget(0, [written_b, written_c, written_d])
        assert await redis.hgetall(pending) == {str(b).encode(): newer_b.encode(), str(c).encode(): tombstone.encode()}
        await queue.forget(0, [undone_c, newer_b])
        assert await redis.exists(pending) == 0
    finally:
        await redis.delete(pending)
