import uuid
from datetime import datetime, timedelta

import redis.asyncio as aioredis

# A sliding window of timestamps per user and kind; the user's hash tag keeps it on one slot.
_TAKE = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""


class RedisQuotas:
    """Rolling-window counters. Losing them (a Redis restart) only forgives some usage: they guard
    limits, they hold nothing a user was promised."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._take = redis.register_script(_TAKE)

    def _key(self, user_id: uuid.UUID, kind: str) -> str:
        return f"{self._prefix}{{u:{user_id}}}:quota:{kind}"

    async def take(self, user_id: uuid.UUID, kind: str, limit: int, window: timedelta, now: datetime,
                   token: str) -> int:
        wait = await self._take([self._key(user_id, kind)],
                                [int(now.timestamp() * 1000), int(window.total_seconds() * 1000), limit, token])
        return int(wait)

    async def give_back(self, user_id: uuid.UUID, kind: str, token: str) -> None:
        await self._redis.zrem(self._key(user_id, kind), token)
