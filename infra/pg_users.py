import ipaddress
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from domain.errors import Code, DomainError
from domain.model import Discovery, Gender, Session, User, Visibility

_USER_COLUMNS = (
    "id, email, display_name, birth_date, gender, created_at, bio, show_me, interest_tags,"
    " age_min, age_max, max_distance_km, visibility, show_activity, show_read_receipts"
)


# A page of people nearby builds a couple of dozen of these per request: the parts that many
# people share (genders, gender sets, settings) are looked up rather than built each time.
_GENDERS = {g.value: g for g in Gender}
_VISIBILITIES = {v.value: v for v in Visibility}


@lru_cache(maxsize=64)
def _show_me(values: tuple[str, ...]) -> frozenset[Gender]:
    return frozenset(Gender(g) for g in values)


@lru_cache(maxsize=4096)
def _discovery(age_min: int, age_max: int, max_distance_km: int) -> Discovery:
    return Discovery(age_min, age_max, max_distance_km)


def _user(row: asyncpg.Record) -> User:
    gender, visibility = row["gender"], row["visibility"]
    return User(
        id=row["id"], email=row["email"], display_name=row["display_name"], birth_date=row["birth_date"],
        gender=_GENDERS.get(gender) or Gender(gender), created_at=row["created_at"], bio=row["bio"],
        show_me=_show_me(tuple(row["show_me"])), interest_tags=tuple(row["interest_tags"]),
        discovery=_discovery(row["age_min"], row["age_max"], row["max_distance_km"]),
        visibility=_VISIBILITIES.get(visibility) or Visibility(visibility), show_activity=row["show_activity"],
        show_read_receipts=row["show_read_receipts"],
    )


def _profile_values(user: User) -> list[Any]:
    return [
        user.display_name, user.bio, user.gender.value, sorted(g.value for g in user.show_me),
        list(user.interest_tags), user.discovery.age_min, user.discovery.age_max,
        user.discovery.max_distance_km, user.visibility.value,
    ]


def _inet(address: str | None) -> str | None:
    try:
        return None if address is None else str(ipaddress.ip_address(address))
    except ValueError:
        return None  # e.g. "unknown" behind an ASGI server that gives no peer address


class PgUsers:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, user: User, password_hash: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetchval(
                "INSERT INTO user_emails (email, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
                user.email, user.id,
            )
            if not claimed:
                return False
            await conn.execute(
                "INSERT INTO users (display_name, bio, gender, show_me, interest_tags, age_min, age_max,"
                " max_distance_km, visibility, id, email, password_hash, birth_date, created_at, updated_at,"
                " show_activity, show_read_receipts)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $16)",
                *_profile_values(user), user.id, user.email, password_hash, user.birth_date, user.created_at,
                user.show_activity, user.show_read_receipts,
            )
            return True

    async def by_email(self, email: str) -> tuple[User, str] | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users"
            " WHERE id = (SELECT user_id FROM user_emails WHERE email = $1) AND deleted_at IS NULL",
            email,
        )
        return None if row is None else (_user(row), row["password_hash"])

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL", user_id
        )
        return None if row is None else _user(row)

    async def get_many(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, User]:
        rows = await self._pool.fetch(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL", ids
        )
        return {row["id"]: _user(row) for row in rows}

    async def password_hash(self, user_id: uuid.UUID) -> str | None:
        value: str | None = await self._pool.fetchval(
            "SELECT password_hash FROM users WHERE id = $1 AND deleted_at IS NULL", user_id
        )
        return value

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        await self._pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash)

    async def save_profile(self, user: User, now: datetime) -> None:
        await self._pool.execute(
            "UPDATE users SET display_name = $1, bio = $2, gender = $3, show_me = $4, interest_tags = $5,"
            " age_min = $6, age_max = $7, max_distance_km = $8, visibility = $9, updated_at = $11,"
            " show_activity = $12, show_read_receipts = $13 WHERE id = $10 AND deleted_at IS NULL",
            *_profile_values(user), user.id, now, user.show_activity, user.show_read_receipts,
        )

    async def delete(self, user_id: uuid.UUID, now: datetime) -> None:
        # The row stays as a tombstone (other tables may still name the id) but loses its personal
        # data; the email is released so it can sign up again.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM user_emails WHERE user_id = $1", user_id)
            await conn.execute(
                "UPDATE users SET deleted_at = $2, email = '', password_hash = '', display_name = '',"
                " bio = '', interest_tags = '{}', updated_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                user_id, now,
            )


class PgSessions:
    """Sessions live in PostgreSQL; Redis only caches "this session is active" for a short while."""

    CACHE_SECONDS = 30

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str) -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = prefix

    def _key(self, user_id: uuid.UUID, session_id: uuid.UUID) -> str:
        return f"{self._prefix}{{u:{user_id}}}:session:{session_id}"

    async def create(self, session: Session, now: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO sessions (user_id, id, refresh_hash, created_at, refreshed_at, expires_at, created_ip)"
            " VALUES ($1, $2, $3, $4, $4, $5, $6)",
            session.user_id, session.id, session.refresh_hash, now, session.expires_at, _inet(session.client_ip),
        )

    async def rotate(
        self, user_id: uuid.UUID, session_id: uuid.UUID, old_hash: bytes, new_hash: bytes,
        expires_at: datetime, now: datetime,
    ) -> bool:
        updated = await self._pool.fetchval(
            "UPDATE sessions SET prev_refresh_hash = refresh_hash, refresh_hash = $4, expires_at = $5,"
            " refreshed_at = $6 WHERE user_id = $1 AND id = $2 AND refresh_hash = $3"
            " AND revoked_at IS NULL AND expires_at > $6 RETURNING 1",
            user_id, session_id, old_hash, new_hash, expires_at, now,
        )
        return bool(updated)

    async def was_rotated_from(self, user_id: uuid.UUID, session_id: uuid.UUID, old_hash: bytes) -> bool:
        found = await self._pool.fetchval(
            "SELECT 1 FROM sessions WHERE user_id = $1 AND id = $2 AND prev_refresh_hash = $3",
            user_id, session_id, old_hash,
        )
        return bool(found)

    async def revoke(self, user_id: uuid.UUID, session_id: uuid.UUID | None, now: datetime) -> None:
        rows = await self._pool.fetch(
            "UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND ($2::uuid IS NULL OR id = $2)"
            " AND revoked_at IS NULL RETURNING id",
            user_id, session_id, now,
        )
        keys = [self._key(user_id, row["id"]) for row in rows]
        if session_id is not None:
            keys.append(self._key(user_id, session_id))
        # A tombstone rather than a delete: a check that read PostgreSQL just before this commit
        # must not be able to cache "active" again (it only sets the key if absent). Without Redis
        # the caller hears UNAVAILABLE and retries: the revocation above is already committed.
        async with _redis_or_unavailable(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, b"0", ex=self.CACHE_SECONDS * 4)
            await pipe.execute()

    async def is_active(self, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime) -> bool:
        key = self._key(user_id, session_id)
        # Not answered from PostgreSQL alone while Redis is away: a revocation made meanwhile could
        # not write its tombstone, and the stale "active" would be believed once Redis is back.
        async with _redis_or_unavailable():
            cached = await self._redis.get(key)
        if cached is not None:
            return cached == b"1"
        active = await self._pool.fetchval(
            "SELECT 1 FROM sessions WHERE user_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > $3",
            user_id, session_id, now,
        )
        if active:
            async with _redis_or_unavailable():
                await self._redis.set(key, b"1", ex=self.CACHE_SECONDS, nx=True)
        return bool(active)


@asynccontextmanager
async def _redis_or_unavailable() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        raise DomainError(Code.UNAVAILABLE, "Sign-in checks are briefly unavailable; try again") from error
