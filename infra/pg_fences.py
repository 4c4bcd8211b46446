import asyncpg

from infra.streams import StaleOwner

_FLOOR = "SELECT fence FROM stream_fences WHERE group_name = $1 AND partition = $2"
_RAISE = (
    "INSERT INTO stream_fences (group_name, partition, fence) VALUES ($1, $2, $3)"
    " ON CONFLICT (group_name, partition) DO UPDATE SET fence = EXCLUDED.fence"
    " WHERE stream_fences.fence {} EXCLUDED.fence RETURNING 1"
)
# A new owner must be strictly newer than anything recorded: no two owners share a fence.
_REMEMBER = _RAISE.format("<")
# The owner itself comes back with the same fence for every batch.
_CLAIM = _RAISE.format("<=")


class PgFences:
    # scope names the stream (prefix and name): deployments or test runs that share one database
    # under different Redis prefixes must not fence each other off.
    def __init__(self, pool: asyncpg.Pool, scope: str = "") -> None:
        self._pool = pool
        self._scope = scope

    async def floor(self, group: str, partition: int) -> int:
        return int(await self._pool.fetchval(_FLOOR, self._scope + group, partition) or 0)

    async def remember(self, group: str, partition: int, fence: int) -> None:
        if await self._pool.fetchval(_REMEMBER, self._scope + group, partition, fence) is None:
            raise StaleOwner(f"{group}/{partition}: fence {fence} is not above the recorded one")

    async def claim(self, conn: asyncpg.Connection, group: str, partition: int, fence: int) -> None:
        # Inside the handler's transaction: the row lock it takes also queues an overlapping old
        # owner behind the new one until one of them commits or rolls back.
        if await conn.fetchval(_CLAIM, self._scope + group, partition, fence) is None:
            raise StaleOwner(f"{group}/{partition}: fence {fence} was superseded")
