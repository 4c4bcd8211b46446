import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from domain.locations import Whereabouts
from domain.model import Gender, Visibility
from domain.ranking import Listing


class PgLocations:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, user_id: uuid.UUID) -> Whereabouts | None:
        row = await self._pool.fetchrow(
            "SELECT device_cell, device_at, ip_cell, ip_accuracy_km, ip_at FROM user_locations WHERE user_id = $1",
            user_id,
        )
        return None if row is None else Whereabouts(user_id, **dict(row))

    async def save(self, where: Whereabouts, cell: str | None, bucket: str | None, now: datetime) -> None:
        # Only this table is written: the trigger queues the change for the location updater.
        await self._pool.execute(
            "INSERT INTO user_locations (user_id, device_cell, device_at, ip_cell, ip_accuracy_km, ip_at, cell,"
            " bucket, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (user_id) DO UPDATE SET device_cell = EXCLUDED.device_cell, device_at = EXCLUDED.device_at,"
            " ip_cell = EXCLUDED.ip_cell, ip_accuracy_km = EXCLUDED.ip_accuracy_km, ip_at = EXCLUDED.ip_at,"
            " cell = EXCLUDED.cell, bucket = EXCLUDED.bucket, updated_at = EXCLUDED.updated_at",
            where.user_id, where.device_cell, where.device_at, where.ip_cell, where.ip_accuracy_km, where.ip_at,
            cell, bucket, now,
        )


ACTIVITY_STEP = timedelta(hours=1)
NOTED_PEOPLE = 20_000  # per process, about 200 bytes each; forgetting someone costs one no-op statement


class PgActivity:
    def __init__(self, pool: asyncpg.Pool, noted_people: int = NOTED_PEOPLE) -> None:
        self._pool = pool
        self._noted: dict[uuid.UUID, datetime] = {}  # who this process last noted, and when
        self._noted_people = noted_people

    async def touch(self, user_id: uuid.UUID, now: datetime) -> None:
        # At most one write an hour per person; buckets hear of it once a day (the trigger compares
        # days), and only as "active recently", never finer. Every page of a list comes here, so for
        # an hour after this process sent the statement for someone it sends nothing: the stored time
        # then lags by at most two hours instead of one, and nobody is ever told finer than days.
        noted = self._noted.get(user_id)
        if noted is not None and timedelta(0) <= now - noted < ACTIVITY_STEP:
            return
        await self._pool.execute(
            "UPDATE users SET last_active_at = $2 WHERE id = $1 AND deleted_at IS NULL"
            " AND (last_active_at IS NULL OR last_active_at < $2::timestamptz - $3::interval)", user_id, now,
            ACTIVITY_STEP,
        )
        self._noted.pop(user_id, None)
        self._noted[user_id] = now
        if len(self._noted) > self._noted_people:
            del self._noted[next(iter(self._noted))]  # insertion order: the longest noted goes first


@dataclass(frozen=True)
class Change:
    user_id: uuid.UUID
    old_bucket: str | None  # where Redis lists them as of the last applied change
    bucket: str | None  # their bucket now
    listing: Listing | None  # None: they are listed nowhere (hidden, deleted, inactive, unlocated)


_STATE = """
SELECT q.user_id, l.cell, l.bucket, d.bucket AS listed_in, u.gender, u.birth_date, u.show_me, u.age_min, u.age_max,
       u.max_distance_km, u.interest_tags, u.visibility, u.deleted_at, u.show_activity, u.last_active_at
FROM unnest($1::uuid[]) AS q(user_id)
LEFT JOIN user_locations l ON l.user_id = q.user_id
LEFT JOIN users u ON u.id = q.user_id
LEFT JOIN discovery_listed d ON d.user_id = q.user_id
"""


async def take_changes(conn: asyncpg.Connection, limit: int, now: datetime, inactive_after: timedelta
                       ) -> list[Change]:
    """Locks up to `limit` queued changes (skipping those other updaters hold) and reads their state.

    Call inside a transaction; record them with `done` before it commits."""
    queued = await conn.fetch(
        "SELECT user_id FROM discovery_changes ORDER BY queued_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit,
    )
    if not queued:
        return []
    # A second statement, so a fresh snapshot: any change committed before the rows were locked is
    # in it, and one still committing waits on the lock and queues itself again afterwards.
    rows = await conn.fetch(_STATE, [q["user_id"] for q in queued])
    return [Change(r["user_id"], r["listed_in"], r["bucket"],
                   _listing(r, now, inactive_after) if r["gender"] is not None else None) for r in rows]


def _listing(row: asyncpg.Record, now: datetime, inactive_after: timedelta) -> Listing | None:
    active = row["last_active_at"]
    if (row["deleted_at"] is not None or row["visibility"] != Visibility.VISIBLE.value or not row["cell"]
            or (active is not None and now - active > inactive_after)):
        return None
    return Listing(
        row["user_id"], row["cell"], Gender(row["gender"]), row["birth_date"],
        frozenset(Gender(g) for g in row["show_me"]), row["age_min"], row["age_max"], row["max_distance_km"],
        tuple(row["interest_tags"]), active.date() if active is not None and row["show_activity"] else None,
    )


async def done(conn: asyncpg.Connection, changes: list[Change], now: datetime) -> None:
    listed = [c for c in changes if c.listing is not None and c.bucket is not None]
    kept = {c.user_id for c in listed}
    await conn.execute("DELETE FROM discovery_changes WHERE user_id = ANY($1::uuid[])", [c.user_id for c in changes])
    await conn.execute("DELETE FROM discovery_listed WHERE user_id = ANY($1::uuid[])",
                       [c.user_id for c in changes if c.user_id not in kept])
    await conn.execute(
        "INSERT INTO discovery_listed (user_id, bucket, listed_at) SELECT *, $3::timestamptz"
        " FROM unnest($1::uuid[], $2::text[]) ON CONFLICT (user_id) DO UPDATE SET bucket = EXCLUDED.bucket,"
        " listed_at = EXCLUDED.listed_at", [c.user_id for c in listed], [c.bucket for c in listed], now,
    )


async def queue_everyone(conn: asyncpg.Connection) -> int:
    # After Redis lost its data: everyone located is listed again from PostgreSQL.
    status = await conn.execute(
        "INSERT INTO discovery_changes (user_id) SELECT user_id FROM user_locations ON CONFLICT (user_id) DO NOTHING")
    return int(status.split()[-1])


async def queue_inactive(conn: asyncpg.Connection, now: datetime, inactive_after: timedelta) -> int:
    status = await conn.execute(
        "INSERT INTO discovery_changes (user_id)"
        " SELECT d.user_id FROM discovery_listed d JOIN users u ON u.id = d.user_id"
        " WHERE u.last_active_at < $1 ON CONFLICT (user_id) DO NOTHING", now - inactive_after)
    return int(status.split()[-1])
