import uuid
from dataclasses import dataclass

import asyncpg

from domain.archive import Segment

_POSITIONS = "SELECT partition, window_start, last_entry FROM chat_archive_positions WHERE scope = $1"
_LOCK_POSITION = ("SELECT last_entry FROM chat_archive_positions WHERE scope = $1 AND partition = $2"
                  " FOR UPDATE")
# FOR SHARE: a new owner recording a higher fence waits until this window is committed or not.
_FENCE = "SELECT fence FROM stream_fences WHERE group_name = $1 AND partition = $2 FOR SHARE"
_SAVE_POSITION = (
    "INSERT INTO chat_archive_positions (scope, partition, window_start, last_entry) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (scope, partition) DO UPDATE SET window_start = EXCLUDED.window_start,"
    " last_entry = EXCLUDED.last_entry")
# A window written again after a crash names the same segments: the rows are replaced, never doubled.
_SAVE_SEGMENTS = (
    "INSERT INTO chat_archive_segments"
    " (chat_id, seq_from, seq_to, messages, object_key, byte_offset, byte_length)"
    " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[], $5::text[], $6::bigint[], $7::int[])"
    " ON CONFLICT (chat_id, seq_from) DO UPDATE SET seq_to = EXCLUDED.seq_to, messages = EXCLUDED.messages,"
    " object_key = EXCLUDED.object_key, byte_offset = EXCLUDED.byte_offset, byte_length = EXCLUDED.byte_length")
_COLUMNS = "s.chat_id, seq_from, seq_to, messages, object_key, byte_offset, byte_length, k.wrapped"
# An erased chat (its key destroyed) has no segments to read, whatever rows are left.
_READABLE = ("FROM chat_archive_segments s JOIN chat_archive_keys k ON k.chat_id = s.chat_id AND k.wrapped IS NOT NULL"
             " WHERE s.chat_id = $1 AND seq_from < $2 AND seq_to > $3")
_OLDER = f"SELECT {_COLUMNS} {_READABLE} ORDER BY seq_from DESC LIMIT $4"
_NEWER = f"SELECT {_COLUMNS} {_READABLE} ORDER BY seq_from LIMIT $4"
_NO_SEQ_ABOVE = 2**62


@dataclass(frozen=True)
class Position:
    window_start: int
    last_entry: str


class PgArchiveIndex:
    """The archive's index: where each partition has reached, and which byte range holds which messages.
    scope names the chat stream (prefix and name), as for fences."""

    def __init__(self, pool: asyncpg.Pool, scope: str) -> None:
        self._pool, self._scope = pool, scope

    async def positions(self) -> dict[int, Position]:
        rows = await self._pool.fetch(_POSITIONS, self._scope)
        return {r["partition"]: Position(r["window_start"], r["last_entry"]) for r in rows}

    async def commit(self, conn: asyncpg.Connection, partition: int, prev: str, window_start: int, last: str,
                     segments: list[Segment], fenced_group: str, fence: int) -> bool:
        """Inside the caller's transaction: records the window unless it does not follow the archived
        position (written already, or built on another) or a newer aggregator owns the partition."""
        recorded = await conn.fetchval(_FENCE, self._scope + fenced_group, partition)
        if recorded is not None and int(recorded) > fence:
            return False
        if (await conn.fetchval(_LOCK_POSITION, self._scope, partition) or "0-0") != prev:
            return False
        if segments:
            await conn.execute(_SAVE_SEGMENTS, [s.chat_id for s in segments], [s.seq_from for s in segments],
                               [s.seq_to for s in segments], [s.messages for s in segments],
                               [s.object_key for s in segments], [s.offset for s in segments],
                               [s.length for s in segments])
        await conn.execute(_SAVE_POSITION, self._scope, partition, window_start, last)
        return True

    async def segments(self, chat_id: uuid.UUID, after: int | None, before: int | None, count: int,
                       newest: bool) -> tuple[list[Segment], bytes | None]:
        """Up to `count` segments overlapping (after, before), nearest to the reading direction's start,
        and the chat's wrapped data key (None, and no segments, once the chat is erased)."""
        rows = await self._pool.fetch(_OLDER if newest else _NEWER, chat_id,
                                      _NO_SEQ_ABOVE if before is None else before, -1 if after is None else after,
                                      count)
        return [Segment(r["chat_id"], r["seq_from"], r["seq_to"], r["messages"], r["object_key"],
                        r["byte_offset"], r["byte_length"]) for r in rows], rows[0]["wrapped"] if rows else None
