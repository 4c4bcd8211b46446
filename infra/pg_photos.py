import json
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from domain.photos import WIDTHS, Photo, PhotoState, Rejection, Size, public_key, upload_key

# Any fixed number: the first half of the per-owner advisory lock that serialises photo-count checks.
_OWNER_LOCK = 7_211_007
NOTIFY_CHANNEL = "photo_jobs"
_COLUMNS = "user_id, id, state, rejection, position, created_at, renditions"
# What the owner sees: not pending uploads, nor the photos of an account being deleted.
_OWNED = "state IN ('PROCESSING', 'READY', 'REJECTED')"


def _photo(row: asyncpg.Record) -> Photo:
    renditions = tuple((key, Size(w, h)) for key, w, h in json.loads(row["renditions"]))
    return Photo(row["id"], row["user_id"], PhotoState(row["state"]), row["position"], row["created_at"],
                 None if row["rejection"] is None else Rejection(row["rejection"]), renditions)


def object_keys(user_id: uuid.UUID, photo_id: uuid.UUID, token: str) -> list[str]:
    return [upload_key(user_id, photo_id), *(public_key(token, w) for w in WIDTHS)]


async def queue_garbage(conn: asyncpg.Connection, keys: Iterable[str]) -> None:
    await conn.execute("INSERT INTO photo_garbage (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                       list(keys))


async def _lock_owner(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", _OWNER_LOCK, user_id)


class PgPhotos:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_upload(self, user_id: uuid.UUID, photo_id: uuid.UUID, content_type: str, byte_size: int,
                            expires_at: datetime, max_photos: int, now: datetime) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_owner(conn, user_id)
            taken = await conn.fetchval(
                "SELECT count(*) FROM photos WHERE user_id = $1 AND (state IN ('PROCESSING', 'READY')"
                " OR (state = 'UPLOADING' AND upload_expires_at > $2))", user_id, now)
            if taken >= max_photos:
                return False
            await conn.execute(
                "INSERT INTO photos (user_id, id, state, position, content_type, byte_size, token, created_at,"
                " updated_at, upload_expires_at) VALUES ($1, $2, 'UPLOADING', 0, $3, $4, $5, $6, $6, $7)",
                user_id, photo_id, content_type, byte_size, secrets.token_urlsafe(18), now, expires_at)
            return True

    async def confirm(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> tuple[Photo, bool] | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_owner(conn, user_id)
            # Placed last at confirmation, so pending uploads never sit between ordered photos.
            row = await conn.fetchrow(
                "UPDATE photos SET state = 'PROCESSING', updated_at = $3, position = 1 + (SELECT"
                f" coalesce(max(position), 0) FROM photos WHERE user_id = $1 AND {_OWNED})"
                " WHERE user_id = $1 AND id = $2 AND state = 'UPLOADING' AND upload_expires_at > $3"
                f" RETURNING {_COLUMNS}", user_id, photo_id, now)
            if row is not None:
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)  # delivered at commit
                return _photo(row), True
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM photos WHERE user_id = $1 AND id = $2"
                                      f" AND {_OWNED}", user_id, photo_id)
            return None if row is None else (_photo(row), False)

    async def own(self, user_id: uuid.UUID) -> list[Photo]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM photos WHERE user_id = $1 AND {_OWNED}"
                                      " ORDER BY position, id", user_id)
        return [_photo(r) for r in rows]

    async def get(self, user_id: uuid.UUID, photo_id: uuid.UUID) -> Photo | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM photos WHERE user_id = $1 AND id = $2"
                                        f" AND {_OWNED}", user_id, photo_id)
        return None if row is None else _photo(row)

    async def visible(self, viewer_id: uuid.UUID, owner_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Photo]]:
        # Blocks are stored on both sides: one look at the viewer's rows covers either direction.
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM photos p WHERE p.user_id = ANY($2::uuid[]) AND p.state = 'READY'"
            " AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.user_id = $1 AND b.other_id = p.user_id)"
            " ORDER BY p.user_id, p.position, p.id", viewer_id, owner_ids)
        found: dict[uuid.UUID, list[Photo]] = {}
        for row in rows:
            found.setdefault(row["user_id"], []).append(_photo(row))
        return found

    async def reorder(self, user_id: uuid.UUID, order: list[uuid.UUID], now: datetime) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_owner(conn, user_id)
            current = await conn.fetch(f"SELECT id FROM photos WHERE user_id = $1 AND {_OWNED}", user_id)
            if {r["id"] for r in current} != set(order):
                return False
            await conn.execute(
                "UPDATE photos p SET position = o.n, updated_at = $3 FROM unnest($2::uuid[]) WITH ORDINALITY"
                " AS o(id, n) WHERE p.user_id = $1 AND p.id = o.id", user_id, order, now)
            return True

    async def delete(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(f"DELETE FROM photos WHERE user_id = $1 AND id = $2 AND {_OWNED}"
                                    " RETURNING user_id, id, token", user_id, photo_id)
            await queue_garbage(conn, [k for r in rows for k in object_keys(r["user_id"], r["id"], r["token"])])
            return bool(rows)

    async def delete_all(self, user_id: uuid.UUID, now: datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("DELETE FROM photos WHERE user_id = $1 RETURNING user_id, id, token", user_id)
            await queue_garbage(conn, [k for r in rows for k in object_keys(r["user_id"], r["id"], r["token"])])


@dataclass(frozen=True)
class Job:
    user_id: uuid.UUID
    photo_id: uuid.UUID
    content_type: str
    byte_size: int
    token: str
    attempt: int  # the fence: only the latest taker may finish the job


async def take_jobs(pool: asyncpg.Pool, limit: int, lease: timedelta, now: datetime) -> list[Job]:
    rows = await pool.fetch(
        "UPDATE photos p SET lease_until = $2::timestamptz + $3::interval, attempts = p.attempts + 1"
        " FROM (SELECT user_id, id FROM photos WHERE state = 'PROCESSING' AND (lease_until IS NULL"
        " OR lease_until < $2) ORDER BY updated_at LIMIT $1 FOR UPDATE SKIP LOCKED) j"
        " WHERE p.user_id = j.user_id AND p.id = j.id"
        " RETURNING p.user_id, p.id, p.content_type, p.byte_size, p.token, p.attempts", limit, now, lease)
    return [Job(r["user_id"], r["id"], r["content_type"], r["byte_size"], r["token"], r["attempts"]) for r in rows]


async def finish(pool: asyncpg.Pool, job: Job, rejection: Rejection | None,
                 renditions: list[tuple[str, Size]], now: datetime) -> bool:
    """Records the outcome; False when the photo is gone (deleted meanwhile) or another taker owns it."""
    state = PhotoState.READY if rejection is None else PhotoState.REJECTED
    stored = json.dumps([[key, size.width, size.height] for key, size in renditions])
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE photos SET state = $4, rejection = $5, renditions = $6::jsonb, updated_at = $7, lease_until = NULL"
            " WHERE user_id = $1 AND id = $2 AND state = 'PROCESSING' AND attempts = $3 RETURNING 1",
            job.user_id, job.photo_id, job.attempt, state.value, None if rejection is None else rejection.value,
            stored, now)
        if done:
            # A refusal also sweeps whatever public sizes an earlier, crashed attempt wrote.
            await queue_garbage(conn, [upload_key(job.user_id, job.photo_id)] if rejection is None
                                else object_keys(job.user_id, job.photo_id, job.token))
            return True
        if not await conn.fetchval("SELECT 1 FROM photos WHERE user_id = $1 AND id = $2", job.user_id, job.photo_id):
            # Deleted while we worked: what we just wrote must go too.
            await queue_garbage(conn, object_keys(job.user_id, job.photo_id, job.token))
        return False


async def sweep(pool: asyncpg.Pool, now: datetime, keep_rejected: timedelta) -> int:
    """Drops expired uploads, old rejections and the photos of deleted accounts; their objects follow."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM photos WHERE (state = 'UPLOADING' AND upload_expires_at < $1)"
            " OR (state = 'REJECTED' AND updated_at < $1 - $2::interval) RETURNING user_id, id, token",
            now, keep_rejected)
        rows += await conn.fetch("DELETE FROM photos WHERE state = 'GONE' RETURNING user_id, id, token")
        await queue_garbage(conn, [k for r in rows for k in object_keys(r["user_id"], r["id"], r["token"])])
        return len(rows)


async def take_garbage(conn: asyncpg.Connection, limit: int) -> list[str]:
    rows = await conn.fetch("SELECT key FROM photo_garbage ORDER BY queued_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                            limit)
    return [r["key"] for r in rows]


async def drop_garbage(conn: asyncpg.Connection, keys: list[str]) -> None:
    await conn.execute("DELETE FROM photo_garbage WHERE key = ANY($1::text[])", keys)
