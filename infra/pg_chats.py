import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from domain.chat import Membership

_MEMBER = ("SELECT m.other_id, m.ended_at IS NOT NULL AS ended,"
           " coalesce(me.show_read_receipts AND them.show_read_receipts, false) AS receipts"
           " FROM user_matches m JOIN users me ON me.id = m.user_id LEFT JOIN users them ON them.id = m.other_id"
           " WHERE m.user_id = $1 AND m.match_id = $2")
_RESERVE = ("INSERT INTO chat_sequences (chat_id, reserved) VALUES ($1, $2) ON CONFLICT (chat_id)"
            " DO UPDATE SET reserved = chat_sequences.reserved + EXCLUDED.reserved RETURNING reserved")
# A session lock, not the row's: the reservation must be committed before the log may hand out its
# numbers (a rollback after that would let a later reservation reuse them), and still keep the next
# reservation waiting until the log has this one.
_LOCK = "SELECT pg_advisory_lock(hashtextextended($1, 7))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 7))"


class PgChatMembers:
    """A chat is a match: its id is the match id, its members the match's two sides."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        row = await self._pool.fetchrow(_MEMBER, user_id, chat_id)
        return None if row is None else Membership(chat_id, user_id, row["other_id"], row["ended"], row["receipts"])


class PgSequences:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def reserve(self, chat_id: uuid.UUID, count: int, apply: Callable[[int, int], Awaitable[None]]) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(_LOCK, str(chat_id))
            try:
                ceiling = int(await conn.fetchval(_RESERVE, chat_id, count))
                await apply(ceiling - count, ceiling)
            finally:
                await conn.execute(_UNLOCK, str(chat_id))
