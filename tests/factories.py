import itertools
import uuid
from datetime import UTC, date, datetime

import asyncpg
from argon2 import PasswordHasher

from domain.ids import new_id
from domain.model import Gender

PASSWORD = "correct horse battery"
# One hash shared by every bulk user: hashing is deliberately slow, and tests need many users.
_SHARED_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
_counter = itertools.count()


async def make_users(
    pool: asyncpg.Pool, count: int, *, gender: Gender = Gender.WOMAN, birth: date = date(1995, 5, 5),
    tags: tuple[str, ...] = (),
) -> list[tuple[uuid.UUID, str]]:
    now = datetime.now(UTC)
    rows = []
    for _ in range(count):
        user_id = new_id()
        email = f"user{next(_counter)}-{user_id.hex[-8:]}@example.test"
        rows.append((user_id, email))
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany("INSERT INTO user_emails (email, user_id) VALUES ($2, $1)", rows)
        await conn.copy_records_to_table(
            "users",
            columns=["id", "email", "password_hash", "display_name", "birth_date", "gender", "show_me",
                     "interest_tags", "created_at", "updated_at"],
            records=[(uid, email, _SHARED_HASH, f"Person {email[:8]}", birth, gender.value,
                      [g.value for g in Gender], list(tags), now, now) for uid, email in rows],
        )
    return rows
