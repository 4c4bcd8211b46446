import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from domain.ids import new_id
from domain.swipes import Direction, Match, Swipe, SwipeEntry, Undo


def pair(a: uuid.UUID, b: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    return (a, b) if a < b else (b, a)


class PgRelations:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def swipes(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe]:
        if not targets:
            return {}
        rows = await self._pool.fetch(
            "SELECT target_id, direction, super_like, created_at FROM swipes"
            " WHERE user_id = $1 AND target_id = ANY($2::uuid[])", user_id, targets,
        )
        return {r["target_id"]: Swipe(user_id, r["target_id"], Direction(r["direction"]), r["super_like"],
                                      r["created_at"]) for r in rows}

    async def swipe_state(self, user_id: uuid.UUID, other_id: uuid.UUID) -> tuple[bool, Swipe | None]:
        row = await self._pool.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM blocks WHERE user_id = $1 AND other_id = $2) AS blocked,"
            " s.direction, s.super_like, s.created_at FROM (SELECT 1) AS one"
            " LEFT JOIN swipes s ON s.user_id = $1 AND s.target_id = $2", user_id, other_id,
        )
        written = None if row["direction"] is None else Swipe(
            user_id, other_id, Direction(row["direction"]), row["super_like"], row["created_at"])
        return bool(row["blocked"]), written

    async def blocked_either_way(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool:
        found = await self._pool.fetchval("SELECT 1 FROM blocks WHERE user_id = $1 AND other_id = $2",
                                          user_id, other_id)
        return bool(found)

    async def blocked_among(self, user_id: uuid.UUID, others: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not others:
            return set()
        rows = await self._pool.fetch("SELECT other_id FROM blocks WHERE user_id = $1 AND other_id = ANY($2::uuid[])",
                                      user_id, list(others))
        return {r["other_id"] for r in rows}

    async def matched(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool:
        low, high = pair(user_id, other_id)
        return bool(await self._pool.fetchval("SELECT 1 FROM matches WHERE low_id = $1 AND high_id = $2", low, high))

    async def end_match(self, user_id: uuid.UUID, match_id: uuid.UUID | None, other_id: uuid.UUID | None,
                        now: datetime) -> Match | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Only the first ending counts: the row lock makes a second, concurrent one find nothing.
            row = await conn.fetchrow(
                "UPDATE user_matches SET ended_at = $4 WHERE user_id = $1 AND ended_at IS NULL"
                " AND ($2::uuid IS NULL OR match_id = $2) AND ($3::uuid IS NULL OR other_id = $3)"
                " RETURNING match_id, other_id, created_at", user_id, match_id, other_id, now,
            )
            if row is None:
                return None
            await conn.execute("UPDATE user_matches SET ended_at = $3 WHERE user_id = $1 AND match_id = $2",
                               row["other_id"], row["match_id"], now)
            low, high = pair(user_id, row["other_id"])
            await conn.execute("UPDATE matches SET ended_at = $3 WHERE low_id = $1 AND high_id = $2", low, high, now)
            return Match(row["match_id"], user_id, row["other_id"], row["created_at"])

    async def end_all_matches(self, user_id: uuid.UUID, now: datetime) -> list[Match]:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE user_matches SET ended_at = $2 WHERE user_id = $1 AND ended_at IS NULL"
                " RETURNING match_id, other_id, created_at", user_id, now,
            )
            # The other sides live on other shards: one small statement each, not a cross-shard join.
            for row in rows:
                await conn.execute("UPDATE user_matches SET ended_at = $3 WHERE user_id = $1 AND match_id = $2",
                                   row["other_id"], row["match_id"], now)
                low, high = pair(user_id, row["other_id"])
                await conn.execute("UPDATE matches SET ended_at = $3 WHERE low_id = $1 AND high_id = $2",
                                   low, high, now)
            return [Match(r["match_id"], user_id, r["other_id"], r["created_at"]) for r in rows]

    async def super_likers(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        # Newest first; whoever the viewer already answered or blocked drops out. Every table read
        # here is keyed by the viewer: one shard. Deleted senders are dropped by the user loader.
        rows = await self._pool.fetch(
            "SELECT s.sender_id FROM super_likes_received s WHERE s.user_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM swipes w WHERE w.user_id = $1 AND w.target_id = s.sender_id)"
            " AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $1 AND b.other_id = s.sender_id)"
            " ORDER BY s.created_at DESC LIMIT $2", user_id, limit,
        )
        return [r["sender_id"] for r in rows]

    async def block(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO blocks (user_id, other_id, by_me, created_at) VALUES ($1, $2, true, $3)"
                " ON CONFLICT (user_id, other_id) DO UPDATE SET by_me = true", user_id, other_id, now)
            await conn.execute(
                "INSERT INTO blocks (user_id, other_id, by_me, created_at) VALUES ($1, $2, false, $3)"
                " ON CONFLICT DO NOTHING", other_id, user_id, now)

    async def report(self, user_id: uuid.UUID, other_id: uuid.UUID, reason: str, details: str,
                     now: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO reports (reporter_id, id, target_id, reason, details, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)", user_id, new_id(), other_id, reason, details, now)

    async def matches(self, user_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None
                      ) -> list[Match]:
        # Newest first. Deleting an account or blocking ends its matches, so no join with users
        # (another shard) is needed to hide them.
        rows = await self._pool.fetch(
            "SELECT m.match_id, m.other_id, m.created_at FROM user_matches m"
            " WHERE m.user_id = $1 AND m.ended_at IS NULL"
            " AND ($2::timestamptz IS NULL OR (m.created_at, m.match_id) < ($2, $3))"
            " ORDER BY m.created_at DESC, m.match_id DESC LIMIT $4",
            user_id, before[0] if before else None, before[1] if before else None, limit,
        )
        return [Match(r["match_id"], user_id, r["other_id"], r["created_at"]) for r in rows]


async def apply_swipes(conn: asyncpg.Connection, entries: Sequence[SwipeEntry]) -> list[Match]:
    """Applies entries in order inside the caller's transaction; returns matches still to announce.

    Replaying entries that were applied before changes nothing, so a batch redelivered after a crash
    is safe."""
    segment: list[Swipe] = []
    for entry in entries:
        if isinstance(entry, Undo):
            await _insert_swipes(conn, segment)
            segment = []
            await _undo(conn, entry)
        else:
            segment.append(entry)
    await _insert_swipes(conn, segment)
    likes = {pair(e.user_id, e.target_id) for e in entries if isinstance(e, Swipe) and e.direction is Direction.LIKE}
    return await _unannounced(conn, sorted(likes))


async def _insert_swipes(conn: asyncpg.Connection, swipes: list[Swipe]) -> None:
    if not swipes:
        return
    # Only the likes come back: everything below is about likes, and most swipes are not.
    inserted = await conn.fetch(
        "WITH inserted AS (INSERT INTO swipes (user_id, target_id, direction, super_like, created_at)"
        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $5::timestamptz[])"
        " ON CONFLICT DO NOTHING RETURNING user_id, target_id, direction, super_like, created_at)"
        " SELECT * FROM inserted WHERE direction = $6",
        [s.user_id for s in swipes], [s.target_id for s in swipes], [s.direction.value for s in swipes],
        [s.super_like for s in swipes], [s.at for s in swipes], Direction.LIKE.value,
    )
    supers = [r for r in inserted if r["super_like"] and r["direction"] == Direction.LIKE.value]
    if supers:
        await conn.execute(
            "INSERT INTO super_likes_received (user_id, sender_id, created_at)"
            " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) ON CONFLICT DO NOTHING",
            [r["target_id"] for r in supers], [r["user_id"] for r in supers], [r["created_at"] for r in supers],
        )
    halves: dict[tuple[uuid.UUID, uuid.UUID], list[bool]] = {}
    for row in inserted:
        if row["direction"] == Direction.LIKE.value:
            low, high = pair(row["user_id"], row["target_id"])
            bits = halves.setdefault((low, high), [False, False])
            bits[0 if row["user_id"] == low else 1] = True
    if not halves:
        return
    # Sorted, so two writers lock pair rows in the same order and cannot deadlock.
    keys = sorted(halves)
    mutual = await conn.fetch(
        "INSERT INTO like_pairs (low_id, high_id, low_likes, high_likes)"
        " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::bool[])"
        " ON CONFLICT (low_id, high_id) DO UPDATE SET low_likes = like_pairs.low_likes OR EXCLUDED.low_likes,"
        " high_likes = like_pairs.high_likes OR EXCLUDED.high_likes"
        " RETURNING low_id, high_id, low_likes AND high_likes AS mutual",
        [k[0] for k in keys], [k[1] for k in keys], [halves[k][0] for k in keys], [halves[k][1] for k in keys],
    )
    now = max(s.at for s in swipes)
    created = [(r["low_id"], r["high_id"]) for r in mutual if r["mutual"]]
    if not created:
        return
    ids = [new_id() for _ in created]
    made = await conn.fetch(
        "INSERT INTO matches (low_id, high_id, id, created_at)"
        " SELECT l, h, i, $4 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(l, h, i)"
        " ON CONFLICT DO NOTHING RETURNING low_id, high_id, id",
        [c[0] for c in created], [c[1] for c in created], ids, now,
    )
    sides = [(r["low_id"], r["id"], r["high_id"]) for r in made] + [(r["high_id"], r["id"], r["low_id"]) for r in made]
    await conn.execute(
        "INSERT INTO user_matches (user_id, match_id, other_id, created_at)"
        " SELECT u, m, o, $4 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(u, m, o) ON CONFLICT DO NOTHING",
        [s[0] for s in sides], [s[1] for s in sides], [s[2] for s in sides], now,
    )


async def _undo(conn: asyncpg.Connection, undo: Undo) -> None:
    low, high = pair(undo.user_id, undo.target_id)
    if await conn.fetchval("SELECT 1 FROM matches WHERE low_id = $1 AND high_id = $2", low, high):
        return  # a like that became a match stays (the API refuses such an undo; this covers a race)
    await conn.execute("DELETE FROM swipes WHERE user_id = $1 AND target_id = $2", undo.user_id, undo.target_id)
    await conn.execute("DELETE FROM super_likes_received WHERE user_id = $1 AND sender_id = $2",
                       undo.target_id, undo.user_id)
    column = "low_likes" if undo.user_id == low else "high_likes"
    await conn.execute(f"UPDATE like_pairs SET {column} = false WHERE low_id = $1 AND high_id = $2", low, high)


async def _unannounced(conn: asyncpg.Connection, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[Match]:
    if not pairs:
        return []
    rows = await conn.fetch(
        "SELECT low_id, high_id, id, created_at FROM matches WHERE notified = false"
        " AND (low_id, high_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
        [p[0] for p in pairs], [p[1] for p in pairs],
    )
    return [Match(r["id"], r["low_id"], r["high_id"], r["created_at"]) for r in rows]


async def mark_announced(pool: asyncpg.Pool, matches: list[Match]) -> None:
    low = [m.user_id for m in matches]
    high = [m.other_id for m in matches]
    await pool.execute(
        "UPDATE matches SET notified = true WHERE (low_id, high_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
        low, high,
    )
