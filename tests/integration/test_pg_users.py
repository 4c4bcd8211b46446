import asyncio
import hashlib
from datetime import UTC, date, datetime, timedelta

from domain.ids import new_id
from domain.model import Gender, Session, User
from infra.app import Runtime
from infra.db import migrate, migration_files
from infra.pg_users import PgSessions, PgUsers
from infra.settings import Settings

NOW = datetime.now(UTC)


def a_user(email: str) -> User:
    return User(new_id(), email, "Ann", date(1990, 1, 1), Gender.WOMAN, NOW)


async def test_migrations_are_idempotent_and_serialised(settings: Settings, migrated: None) -> None:
    # Several processes starting together must not trip over each other.
    results = await asyncio.gather(*(migrate(settings.database_url) for _ in range(4)))
    assert results == [[]] * 4
    assert migration_files()[0][1] == "0001_accounts.sql"


async def test_email_is_unique_and_released_on_delete(runtime: Runtime) -> None:
    assert runtime.pool is not None
    users = PgUsers(runtime.pool)
    email = f"{new_id().hex}@example.test"
    first, second = a_user(email), a_user(email)
    created = await asyncio.gather(users.create(first, "h1"), users.create(second, "h2"))
    assert sorted(created) == [False, True]  # concurrent sign-ups: exactly one wins
    winner = first if created[0] else second
    found = await users.by_email(email)
    assert found is not None and found[0].id == winner.id
    await users.delete(winner.id, NOW)
    assert await users.get(winner.id) is None and await users.by_email(email) is None
    assert await users.get_many([winner.id]) == {}
    row = await runtime.pool.fetchrow("SELECT email, display_name, deleted_at FROM users WHERE id = $1", winner.id)
    assert row["email"] == "" and row["display_name"] == "" and row["deleted_at"] is not None
    assert await users.create(a_user(email), "h3")


async def test_rotation_is_compare_and_set(runtime: Runtime) -> None:
    assert runtime.pool is not None and runtime.redis is not None
    sessions = PgSessions(runtime.pool, runtime.redis, runtime.settings.redis_prefix)
    old = hashlib.sha256(b"old").digest()
    session = Session(new_id(), new_id(), old, NOW + timedelta(days=1))
    await sessions.create(session, NOW)
    # Two devices refreshing with the same token at once: one wins, the other is refused.
    outcomes = await asyncio.gather(*(
        sessions.rotate(session.user_id, session.id, old, hashlib.sha256(bytes([i])).digest(),
                        NOW + timedelta(days=2), NOW) for i in range(5)))
    assert sorted(outcomes) == [False] * 4 + [True]
    assert await sessions.was_rotated_from(session.user_id, session.id, old)


async def test_revocation_beats_the_cache(runtime: Runtime) -> None:
    assert runtime.pool is not None and runtime.redis is not None
    sessions = PgSessions(runtime.pool, runtime.redis, runtime.settings.redis_prefix)
    session = Session(new_id(), new_id(), b"x" * 32, NOW + timedelta(days=1))
    await sessions.create(session, NOW)
    assert await sessions.is_active(session.user_id, session.id, NOW)  # now cached as active
    await sessions.revoke(session.user_id, None, NOW)
    assert not await sessions.is_active(session.user_id, session.id, NOW)
    # Even if the cache entry vanishes (Redis restarted), PostgreSQL still says no.
    await runtime.redis.delete(sessions._key(session.user_id, session.id))
    assert not await sessions.is_active(session.user_id, session.id, NOW)
    assert not await sessions.is_active(session.user_id, session.id, NOW + timedelta(days=2))
