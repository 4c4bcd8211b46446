"""Per-chat data keys of the chat archive (envelope encryption).

Every chat's part of every archived object is sealed with that chat's own data key; the data key is
stored in PostgreSQL only wrapped by the master key. Destroying one row therefore erases the chat in
every object at once, without reading, rewriting or even listing those objects (they hold many other
chats each, so deleting them is not an option, and rewriting them would cost a GET and a PUT per
window the chat ever spanned). Object-store lifecycle rules or per-chat objects were the
alternatives: the first cannot erase one chat, the second would make the PUT count grow with the
number of active chats. See docs/archive.md."""
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.archive import erase_after
from domain.swipes import ChatCloser

log = logging.getLogger(__name__)

NONCE = 12

# A key is created on the first window that holds the chat; a chat closed before that gets one too,
# so that a late window of it still finds its erasure date. wrapped NULL means erased: never again a key.
_CREATE = ("INSERT INTO chat_archive_keys (chat_id, wrapped) SELECT * FROM unnest($1::uuid[], $2::bytea[])"
           " ON CONFLICT (chat_id) DO NOTHING")
_FETCH = "SELECT chat_id, wrapped FROM chat_archive_keys WHERE chat_id = ANY($1::uuid[])"
# The earliest date wins: a chat closed at once and then reported is not brought back.
_SCHEDULE = ("INSERT INTO chat_archive_keys (chat_id, wrapped, erase_after) VALUES ($1, $2, $3)"
             " ON CONFLICT (chat_id) DO UPDATE SET erase_after ="
             " least(coalesce(chat_archive_keys.erase_after, EXCLUDED.erase_after), EXCLUDED.erase_after)")
_ERASE = ("UPDATE chat_archive_keys SET wrapped = NULL WHERE wrapped IS NOT NULL AND erase_after <= $1"
          " AND ($2::uuid IS NULL OR chat_id = $2) RETURNING chat_id")
_FORGET_SEGMENTS = "DELETE FROM chat_archive_segments WHERE chat_id = ANY($1::uuid[])"
# The backstop for a close whose scheduling failed (PostgreSQL away at that moment): a match that
# ended while its chat's key has no erasure date gets one, counted from the end, as chat_ended would.
_SCHEDULE_MISSED = (
    "UPDATE chat_archive_keys k SET erase_after = m.ended_at + CASE WHEN EXISTS (SELECT 1 FROM reports r"
    " WHERE r.reporter_id IN (m.user_id, m.other_id) AND r.target_id IN (m.user_id, m.other_id))"
    " THEN $1::interval ELSE interval '0' END"
    " FROM user_matches m WHERE m.match_id = k.chat_id AND m.ended_at IS NOT NULL"
    " AND k.erase_after IS NULL AND k.wrapped IS NOT NULL")
_MEMBERS = "SELECT user_id, other_id FROM user_matches WHERE match_id = $1 LIMIT 1"
# Either side reporting the other keeps the chat for moderation.
_REPORTED = "SELECT EXISTS (SELECT 1 FROM reports WHERE reporter_id = ANY($1::uuid[]) AND target_id = ANY($1::uuid[]))"


class Sealer:
    """AES-256-GCM: data keys wrapped by the master key, segments sealed by their chat's data key.
    The chat id (and the segment's first seq) are bound in as associated data, so a byte range
    moved to another chat's index row fails to open instead of showing the wrong messages."""

    def __init__(self, master_key: bytes) -> None:
        self._master = AESGCM(master_key)

    @classmethod
    def from_secret(cls, secret: str) -> "Sealer":
        # Its own derivation of the service secret: no other use of that secret can produce it.
        return cls(hashlib.sha256(b"chat-archive-master:" + secret.encode()).digest())

    def new_wrapped(self, chat_id: uuid.UUID) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._master.encrypt(nonce, AESGCM.generate_key(bit_length=256), chat_id.bytes)

    def unwrap(self, chat_id: uuid.UUID, wrapped: bytes) -> bytes:
        return self._master.decrypt(wrapped[:NONCE], wrapped[NONCE:], chat_id.bytes)

    @staticmethod
    def seal(data_key: bytes, chat_id: uuid.UUID, seq_from: int, data: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + AESGCM(data_key).encrypt(nonce, data, _aad(chat_id, seq_from))

    @staticmethod
    def open(data_key: bytes, chat_id: uuid.UUID, seq_from: int, sealed: bytes) -> bytes:
        try:
            return AESGCM(data_key).decrypt(sealed[:NONCE], sealed[NONCE:], _aad(chat_id, seq_from))
        except InvalidTag:
            raise ValueError(f"archived segment of chat {chat_id} from {seq_from} fails authentication") from None


def _aad(chat_id: uuid.UUID, seq_from: int) -> bytes:
    return chat_id.bytes + seq_from.to_bytes(8, "big")


class PgArchiveKeys:
    def __init__(self, pool: asyncpg.Pool, sealer: Sealer) -> None:
        self._pool, self.sealer = pool, sealer

    async def data_keys(self, chat_ids: list[uuid.UUID]) -> dict[uuid.UUID, bytes | None]:
        """Each chat's data key, created if it has none yet; None for a chat already erased."""
        if not chat_ids:
            return {}
        async with self._pool.acquire() as conn:
            rows = list(await conn.fetch(_FETCH, chat_ids))
            missing = list(set(chat_ids) - {r["chat_id"] for r in rows})
            if missing:
                await conn.execute(_CREATE, missing, [self.sealer.new_wrapped(c) for c in missing])
                rows += await conn.fetch(_FETCH, missing)  # ours, or a racing creator's
        return {r["chat_id"]: None if r["wrapped"] is None else self.sealer.unwrap(r["chat_id"], r["wrapped"])
                for r in rows}

    async def chat_ended(self, chat_id: uuid.UUID, now: datetime, report_hold: timedelta) -> datetime:
        """Schedules the chat's erasure (see domain.archive.erase_after) and erases it at once when
        that is now; returns the date set."""
        async with self._pool.acquire() as conn:
            members = await conn.fetchrow(_MEMBERS, chat_id)
            reported = members is not None and bool(await conn.fetchval(_REPORTED, list(members.values())))
            when = erase_after(now, reported, report_hold)
            await conn.execute(_SCHEDULE, chat_id, self.sealer.new_wrapped(chat_id), when)
        await self.erase_due(now, chat_id)
        return when

    async def schedule_missed(self, report_hold: timedelta) -> int:
        return int((await self._pool.execute(_SCHEDULE_MISSED, report_hold)).split()[-1])

    async def erase_due(self, now: datetime, chat_id: uuid.UUID | None = None) -> int:
        """Destroys the keys whose erasure date has come (and forgets where their bytes lie)."""
        async with self._pool.acquire() as conn, conn.transaction():
            erased = [r["chat_id"] for r in await conn.fetch(_ERASE, now, chat_id)]
            if erased:
                await conn.execute(_FORGET_SEGMENTS, erased)
        return len(erased)


class ErasingCloser:
    """Every way a match ends (unmatch, block, report, account deletion) closes its chat here: the
    chat log first, then the archive's erasure is scheduled."""

    def __init__(self, log: ChatCloser, keys: PgArchiveKeys, report_hold: timedelta,
                 clock: Callable[[], datetime]) -> None:
        self._log, self._keys, self._hold, self._clock = log, keys, report_hold, clock

    async def close(self, chat_id: uuid.UUID) -> None:
        await self._log.close(chat_id)
        try:
            await self._keys.chat_ended(chat_id, self._clock(), self._hold)
        except (asyncpg.PostgresError, OSError):
            # The match has ended already and will not end again: the janitor's backstop
            # (schedule_missed) erases it instead, minutes later.
            log.exception("chat %s: archive erasure not scheduled; the janitor will", chat_id)
