import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from domain.ids import new_id
from domain.model import User
from domain.swipes import Direction, Match, Swipe
from infra.pg_users import _USER_COLUMNS, _user
from infra.swipe_queue import DIRECTION, SUPER, TARGET, USER

# Beside another table's columns of the same names (a swipe's created_at).
_QUALIFIED_USER_COLUMNS = ", ".join(f"u.{name.strip()}" for name in _USER_COLUMNS.split(","))


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

    async def swipe_state(self, user_id: uuid.UUID, other_id: uuid.UUID
                          ) -> tuple[User | None, bool, Swipe | None]:
        row = await self._pool.fetchrow(
            f"SELECT {_QUALIFIED_USER_COLUMNS}, EXISTS (SELECT 1 FROM blocks WHERE user_id = $1 AND other_id = $2)"
            " AS blocked_, s.direction AS direction_, s.super_like AS super_like_, s.created_at AS swiped_at_"
            " FROM (SELECT 1) AS one LEFT JOIN users AS u ON u.id = $2 AND u.deleted_at IS NULL"
            " LEFT JOIN swipes AS s ON s.user_id = $1 AND s.target_id = $2", user_id, other_id,
        )
        written = None if row["direction_"] is None else Swipe(
            user_id, other_id, Direction(row["direction_"]), row["super_like_"], row["swiped_at_"])
        return (None if row["id"] is None else _user(row)), bool(row["blocked_"]), written

    async def blocked_either_way(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool:
        found = await self._pool.fetchval("SELECT 1 FROM blocks WHERE user_id = $1 AND other_id = $2",
                                          user_id, other_id)
        return bool(found)

    async def page_people(self, user_id: uuid.UUID, others: Sequence[uuid.UUID]
                          ) -> tuple[set[uuid.UUID], set[uuid.UUID], dict[uuid.UUID, User]]:
        if not others:
            return set(), set(), {}
        # One statement for the profiles and the viewer's own rows about them (both tables are keyed
        # by the viewer: one partition each): a page of people nearby waits on a single round trip.
        rows = await self._pool.fetch(
            f"SELECT {_USER_COLUMNS},"
            " EXISTS (SELECT FROM swipes AS s WHERE s.user_id = $1 AND s.target_id = u.id) AS swiped_,"
            " EXISTS (SELECT FROM blocks AS b WHERE b.user_id = $1 AND b.other_id = u.id) AS blocked_"
            " FROM users AS u WHERE u.id = ANY($2::uuid[]) AND u.deleted_at IS NULL",
            user_id, list(others),
        )
        return ({r["id"] for r in rows if r["swiped_"]}, {r["id"] for r in rows if r["blocked_"]},
                {r["id"]: _user(r) for r in rows})

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

    async def separate(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None:
        # by_me false on both rows: a block either of them made stays theirs.
        await self._pool.execute(
            "INSERT INTO blocks (user_id, other_id, by_me, created_at) VALUES ($1, $2, false, $3), ($2, $1, false, $3)"
            " ON CONFLICT DO NOTHING", user_id, other_id, now)

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


# The writer hands PostgreSQL the stream entries as they are (infra/swipe_queue.py's format, checked
# by decode_fields): S|user|target|L or D|super 0 or 1|ms, or U|user|target|ms, one a line in a
# single text value. Splitting them here costs PostgreSQL less than building typed arrays costs the
# writer (a text[] too costs asyncpg a few checks per element).
_ENTRIES = "unnest(string_to_array($1::text, E'\\n')) AS x"
_USER, _TARGET = "split_part(x, '|', 2)::uuid", "split_part(x, '|', 3)::uuid"
_AT = "to_timestamp(split_part(x, '|', 6)::float8 / 1000)"
_INSERT_SWIPES = (
    "INSERT INTO swipes (user_id, target_id, direction, super_like, created_at)"
    f" SELECT {_USER}, {_TARGET}, CASE split_part(x, '|', 4) WHEN 'L' THEN 'LIKE' ELSE 'DISLIKE' END,"
    f" split_part(x, '|', 5) = '1', {_AT} FROM {_ENTRIES}"
)
# Entries never applied before: a plain INSERT (ON CONFLICT DO NOTHING costs PostgreSQL a third more),
# and as it fails unless it inserts every entry, the super likes among them ($2) are all received.
_INSERT_NEW_SWIPES = (
    f"WITH swiped AS ({_INSERT_SWIPES}) INSERT INTO super_likes_received (user_id, sender_id, created_at)"
    f" SELECT {_TARGET}, {_USER}, {_AT} FROM {_ENTRIES.replace('$1', '$2')} ON CONFLICT DO NOTHING"
)
# Entries possibly applied before (a batch redelivered after a crash).
_INSERT_SWIPES_AGAIN = _INSERT_SWIPES + " ON CONFLICT DO NOTHING"
# Then a statement of its own, so that it sees the rows just inserted: a super like is received only
# when that swipe is the one written. LATERAL ... LIMIT 1 keeps each lookup a single index probe; a
# join would let the planner scan every partition.
_INSERT_SUPER_LIKES = (
    "INSERT INTO super_likes_received (user_id, sender_id, created_at)"
    f" SELECT s.target_id, s.user_id, s.created_at FROM {_ENTRIES} CROSS JOIN LATERAL"
    f" (SELECT user_id, target_id, created_at FROM swipes WHERE user_id = {_USER} AND target_id = {_TARGET}"
    " AND direction = 'LIKE' AND super_like LIMIT 1) AS s ON CONFLICT DO NOTHING"
)
_MATCHED = "SELECT FROM matches WHERE low_id = least($1::uuid, $2::uuid) AND high_id = greatest($1::uuid, $2::uuid)"
_UNDO = (
    f"WITH gone AS (DELETE FROM swipes WHERE user_id = $1 AND target_id = $2 AND NOT EXISTS ({_MATCHED})"
    " RETURNING direction, super_like, created_at),"
    " unsent AS (DELETE FROM super_likes_received WHERE user_id = $2 AND sender_id = $1 AND EXISTS (SELECT FROM gone))"
    " SELECT direction, super_like, created_at FROM gone"
)
_RESTORE = (
    "WITH back AS (INSERT INTO swipes (user_id, target_id, direction, super_like, created_at)"
    f" SELECT $1, $2, 'LIKE', $3, $4 WHERE EXISTS ({_MATCHED}) RETURNING super_like)"
    " INSERT INTO super_likes_received (user_id, sender_id, created_at) SELECT $2, $1, $4 FROM back"
    " WHERE super_like ON CONFLICT DO NOTHING"
)
# UUIDv7 as domain.ids.new_id makes them (48-bit milliseconds, version 7, variant 10), from the moment
# the second like was given.
_MATCH_ID = (
    "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING"
    " substring(int8send((extract(epoch FROM at) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid"
)
# Run after the likes' own transaction committed. Of two writers committing the two halves of a pair
# at once, the one whose statement starts later sees both (READ COMMITTED), so a pair is never missed;
# the primary key makes a second match impossible. FOR KEY SHARE holds the other half until the match
# is committed: an undo waiting on it finds the match afterwards (_undo). A lock is only taken on a
# row found, so only pairs whose other half exists are locked.
#
# The like's own row needs looking up (and holding) only when the batch may have left it otherwise:
# an undo in the batch, or a batch seen before. Otherwise its transaction inserted it, and only the
# partition's owner could remove it, which the fence the caller claims keeps away until this commits.
#
# Whoever inserts the match announces it: low_completed records whose writer that was, so after a
# crash before notified was set, replaying that batch announces it again (at least once), while the
# other side's writer, looking at the same pair, leaves it alone (exactly once without crashes).
def _match(look_up_own: bool) -> str:
    # Split once: a lookup would otherwise split its entry again for every partition it considers.
    # A batch with no undo and never seen before holds each like once, with the time of its row.
    given = (f"SELECT DISTINCT {_USER} AS u, {_TARGET} AS t FROM {_ENTRIES}" if look_up_own
             else f"SELECT {_USER} AS u, {_TARGET} AS t, {_AT} AS own_at FROM {_ENTRIES}")
    own = (" CROSS JOIN LATERAL (SELECT created_at AS own_at FROM swipes WHERE user_id = l.u AND target_id = l.t"
           " AND direction = 'LIKE' LIMIT 1 FOR KEY SHARE) AS a" if look_up_own else "")
    return (
        f"WITH given AS MATERIALIZED ({given}),"
        " back AS MATERIALIZED (SELECT l.*, b.back_at FROM given AS l CROSS JOIN LATERAL"
        " (SELECT created_at AS back_at FROM swipes WHERE user_id = l.t AND target_id = l.u"
        " AND direction = 'LIKE' LIMIT 1 FOR KEY SHARE) AS b WHERE l.u <> l.t),"
        " mutual AS (SELECT least(l.u, l.t) AS low_id, greatest(l.u, l.t) AS high_id, l.u < l.t AS by_low,"
        f" greatest(own_at, back_at) AS at FROM back AS l{own}),"
        " made AS (INSERT INTO matches (low_id, high_id, id, created_at, low_completed)"
        f" SELECT DISTINCT ON (low_id, high_id) low_id, high_id, {_MATCH_ID}, at, by_low FROM mutual"
        " ORDER BY low_id, high_id ON CONFLICT DO NOTHING RETURNING low_id, high_id, id, created_at),"
        " sides AS (INSERT INTO user_matches (user_id, match_id, other_id, created_at)"
        " SELECT low_id, id, high_id, created_at FROM made UNION ALL SELECT high_id, id, low_id, created_at FROM made)"
        " SELECT low_id, high_id, id, created_at FROM made UNION ALL"
        " SELECT m.low_id, m.high_id, m.id, m.created_at FROM mutual AS p CROSS JOIN LATERAL"
        " (SELECT * FROM matches WHERE low_id = p.low_id AND high_id = p.high_id LIMIT 1) AS m"
        " WHERE m.low_completed = p.by_low AND NOT m.notified"
    )


_MATCH, _MATCH_NEW = _match(look_up_own=True), _match(look_up_own=False)
# For the rest of the transaction. Every lookup above is pruned to its partition at run time, so a
# plan made for particular entries is no better than the generic one, and making it costs more than
# running it (about 5 ms for _MATCH): without this, each connection would plan them five times over.
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"


async def apply_swipes(conn: asyncpg.Connection, entries: Sequence[str], *, again: bool = True) -> bool:
    """Applies raw stream entries in order inside the caller's transaction; True when it inserted
    every swipe among them and undid none (what match_likes may then take for granted).

    Replaying entries that were applied before changes nothing, so a batch redelivered after a crash
    is safe. An undo splits the batch: the same person may be swiped, undone and swiped again.

    again=False assumes no entry was applied before, and raises UniqueViolationError (the transaction
    is lost then) on one that was: the caller retries with again=True."""
    await conn.execute(_GENERIC_PLANS)
    undos = [i for i, raw in enumerate(entries) if raw[0] == "U"]
    start = 0
    for at in undos:
        await _insert_swipes(conn, entries[start:at], again)
        await _undo(conn, entries[at])
        start = at + 1
    await _insert_swipes(conn, entries[start:] if start else entries, again)
    return not again and not undos


async def _insert_swipes(conn: asyncpg.Connection, swipes: Sequence[str], again: bool) -> None:
    if not swipes:
        return
    supers = "\n".join([raw for raw in swipes if raw[SUPER] == "1" and raw[DIRECTION] == "L"])
    if not again:
        await conn.execute(_INSERT_NEW_SWIPES, "\n".join(swipes), supers)
        return
    await conn.execute(_INSERT_SWIPES_AGAIN, "\n".join(swipes))
    if supers:
        await conn.execute(_INSERT_SUPER_LIKES, supers)


async def _undo(conn: asyncpg.Connection, raw: str) -> None:
    user, target = raw[USER], raw[TARGET]
    # A like that became a match stays (the API refuses such an undo; this covers a race).
    gone = await conn.fetchrow(_UNDO, user, target)
    if gone is not None and gone["direction"] == Direction.LIKE.value:
        # The other side's match check may have held this like while it matched it; the delete
        # waited for it, and only a new statement sees its match.
        await conn.execute(_RESTORE, user, target, gone["super_like"], gone["created_at"])


def likes_among(entries: Sequence[str]) -> list[str]:
    return [raw for raw in entries if raw[DIRECTION] == "L"]  # an undo has a digit there


async def match_likes(conn: asyncpg.Connection, likes: Sequence[str], *, inserted: bool = False) -> list[Match]:
    """Makes the matches these committed likes complete; returns those this writer must announce.

    Run in a transaction of its own, after the likes' one committed, holding the partition's fence
    again; for every like of a batch (not only the new ones): a batch redelivered after a crash checks
    again. inserted: what apply_swipes returned for them."""
    if not likes:
        return []
    await conn.execute(_GENERIC_PLANS)
    rows = await conn.fetch(_MATCH_NEW if inserted else _MATCH, "\n".join(likes))
    return [Match(r["id"], r["low_id"], r["high_id"], r["created_at"]) for r in rows]


# Pairs as "low|high" lines, split here like the entries: a uuid[] parameter would make asyncpg look
# the array type up on every new connection (three more queries, one of them slow to plan).
_MARK_ANNOUNCED = (
    "UPDATE matches SET notified = true WHERE (low_id, high_id) IN"
    f" (SELECT split_part(x, '|', 1)::uuid, split_part(x, '|', 2)::uuid FROM {_ENTRIES})"
)


async def mark_announced(db: asyncpg.Pool | asyncpg.Connection, matches: list[Match]) -> None:
    await db.execute(_MARK_ANNOUNCED, "\n".join([f"{m.user_id}|{m.other_id}" for m in matches]))
