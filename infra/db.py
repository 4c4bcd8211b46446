import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 7_211_001


async def _keep_session(conn: asyncpg.Connection) -> None:
    # asyncpg has already rolled back any open transaction by now. Its default reset adds a round
    # trip to every release (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) for session state this
    # code never leaves behind: pooled connections take no session locks, LISTEN or plain SET (use
    # SET LOCAL inside a transaction; the migration lock has a connection of its own).
    pass


@asynccontextmanager
async def open_pool(url: str, max_size: int = 10) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size, command_timeout=30, reset=_keep_session)
    try:
        yield pool
    finally:
        await pool.close()


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("infra") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        # Only one of two files with the same number would ever be applied, silently.
        clash = sorted(name for version, name, _ in found if versions.count(version) > 1)
        raise RuntimeError(f"migrations share a version number: {', '.join(clash)}")
    return sorted(found)


async def migrate(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        # Several processes may start at once; the advisory lock makes them migrate one at a time.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("applied migration %s", name)
            applied.append(name)
        return applied
    finally:
        await conn.close()
