import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from infra.archive_keys import PgArchiveKeys, Sealer
from infra.db import open_pool
from infra.settings import Settings
from workers import stop_on_signals

log = logging.getLogger(__name__)

# Ended sessions are kept a while: a reused refresh token is recognised (and its session ended)
# only while its row exists.
KEEP_ENDED = timedelta(days=7)
BATCH = 5_000


async def purge_sessions(pool: asyncpg.Pool, keep: timedelta = KEEP_ENDED) -> int:
    total = 0
    while True:
        # Small batches keep each delete's locks short on a big table.
        deleted = await pool.fetchval(
            "WITH gone AS (DELETE FROM sessions WHERE ctid = ANY(ARRAY("
            " SELECT ctid FROM sessions WHERE expires_at < now() - $1::interval"
            " OR revoked_at < now() - $1::interval LIMIT $2)) RETURNING 1) SELECT count(*) FROM gone",
            keep, BATCH,
        )
        total += deleted
        if deleted < BATCH:
            return total


async def main(settings: Settings, interval: float = 600.0) -> None:
    stop = stop_on_signals()
    async with open_pool(settings.database_url, max_size=2) as pool:
        keys = PgArchiveKeys(pool, Sealer.from_secret(settings.secret_key))
        while not stop.is_set():
            purged = await purge_sessions(pool)
            if purged:
                log.info("purged %d ended sessions", purged)
            # Reported chats kept for moderation: their archive goes once the hold is over.
            await keys.schedule_missed(timedelta(days=settings.archive_report_hold_days))
            erased = await keys.erase_due(datetime.now(UTC))
            if erased:
                log.info("erased the archive of %d ended chats", erased)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
