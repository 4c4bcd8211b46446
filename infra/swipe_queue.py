import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from asyncpg.pgproto.pgproto import UUID as FastUUID

from domain.swipes import Direction, Quota, Swipe, SwipeEntry, Undo, quota_refused
from infra.redis_client import durably
from infra.streams import StreamSpec

SWIPE_WRITER = "swipe-writer"
_UNDONE = "undone"

# Every key carries the partition's hash tag (the user's quotas too), so the check, the quotas,
# the append and the bookkeeping are one atomic step on one cluster slot: an acknowledged swipe is
# in the stream, never twice, and a refused one took nothing.
_ENQUEUE = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current then
  if string.sub(current, 1, 7) ~= 'undone:' then return {1, current} end
elseif ARGV[4] ~= '' then
  return {1, ARGV[4]}
end
local now = tonumber(ARGV[5])
for i = 4, #KEYS do
  local limit, window = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {2, i - 3, math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))}
  end
end
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return {0, ARGV[2]}
"""
_UNDO = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('DEL', KEYS[3])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[5]) end
return 1
"""
# Written entries leave the pending map, unless something newer for the same person replaced them.
_FORGET = """
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], ARGV[2 * i - 1]) == ARGV[2 * i] then redis.call('HDEL', KEYS[i], ARGV[2 * i - 1]) end
end
return 1
"""


def swipes_spec(prefix: str, partitions: int) -> StreamSpec:
    return StreamSpec("swipes", partitions, prefix, (SWIPE_WRITER,))


# One entry is one short line: S|user|target|L or D|super 0 or 1|ms, or U|user|target|ms. Cheaper
# to write and to read than JSON (the writer reads hundreds of thousands a second), and PostgreSQL
# can split it too.
def encode(entry: SwipeEntry) -> str:
    at = round(entry.at.timestamp() * 1000)
    if isinstance(entry, Undo):
        return f"U|{entry.user_id}|{entry.target_id}|{at}"
    return f"S|{entry.user_id}|{entry.target_id}|{entry.direction.value[0]}|{int(entry.super_like)}|{at}"


def decode(raw: str | bytes) -> SwipeEntry:
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split("|")
    # asyncpg's own uuid.UUID subclass (what it returns for uuid columns): parsed and printed in C,
    # seven times faster than uuid.UUID.
    user, target = FastUUID(parts[1]), FastUUID(parts[2])
    if parts[0] == "U" and len(parts) == 4:
        return Undo(user, target, datetime.fromtimestamp(int(parts[3]) / 1000, UTC))
    if parts[0] != "S" or len(parts) != 6 or parts[3] not in ("L", "D") or parts[4] not in ("0", "1"):
        raise ValueError(f"not a swipe entry: {text[:100]!r}")
    direction = Direction.LIKE if parts[3] == "L" else Direction.DISLIKE
    return Swipe(user, target, direction, parts[4] == "1", datetime.fromtimestamp(int(parts[5]) / 1000, UTC))


def decode_fields(fields: dict[bytes, bytes]) -> tuple[SwipeEntry, str]:
    # The raw text rides along: the pending map is cleaned by exact value, and re-encoding a
    # decoded time could differ in the last millisecond.
    raw = fields[b"e"].decode()
    return decode(raw), raw


class RedisSwipeQueue:
    def __init__(self, redis: aioredis.Redis, spec: StreamSpec, undo_window: timedelta, ack_replicas: int = 0,
                 ack_timeout_ms: int = 500) -> None:
        self._redis = redis
        self._spec = spec
        self._undo_ms = int(undo_window.total_seconds() * 1000)
        self._replicas = ack_replicas
        self._timeout = ack_timeout_ms
        self._enqueue = redis.register_script(_ENQUEUE)
        self._undo = redis.register_script(_UNDO)
        self._forget = redis.register_script(_FORGET)

    def _keys(self, user_id: uuid.UUID) -> list[str]:
        stream = self._spec.key(self._spec.partition_of(str(user_id)))
        return [stream, f"{stream}:pending:{user_id}", f"{stream}:last:{user_id}"]

    def tombstone(self, undo: Undo) -> str:
        return f"{_UNDONE}:{round(undo.at.timestamp() * 1000)}"

    def _quota_key(self, user_id: uuid.UUID, kind: str) -> str:
        return f"{self._keys(user_id)[0]}:quota:{kind}:{user_id}"

    @staticmethod
    def _token(swipe: Swipe) -> str:
        # What the swipe took of each quota, named so that its undo can give exactly that back.
        return f"{swipe.target_id}:{round(swipe.at.timestamp() * 1000)}"

    async def enqueue(self, swipe: Swipe, quotas: Sequence[Quota], written: Swipe | None) -> Swipe:
        encoded = encode(swipe)
        now_ms = round(swipe.at.timestamp() * 1000)
        args: list[str | int] = [str(swipe.target_id), encoded, self._undo_ms, encode(written) if written else "",
                                 now_ms, self._token(swipe)]
        for quota in quotas:
            args += [quota.limit, int(quota.window.total_seconds() * 1000)]
        keys = self._keys(swipe.user_id) + [self._quota_key(swipe.user_id, q.kind) for q in quotas]
        status, *rest = await durably(self._redis, self._replicas, self._timeout, self._enqueue, keys, args)
        if int(status) == 2:
            raise quota_refused(quotas[int(rest[0]) - 1].kind, int(rest[1]))
        if int(status) == 0:
            return swipe
        earlier = decode(rest[0])
        return earlier if isinstance(earlier, Swipe) else swipe

    async def pending(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe | None]:
        if not targets:
            return {}
        values = await self._redis.hmget(self._keys(user_id)[1], [str(t) for t in targets])
        found: dict[uuid.UUID, Swipe | None] = {}
        for target, value in zip(targets, values, strict=True):
            if value is not None:
                text = value.decode() if isinstance(value, bytes) else value
                entry = None if text.startswith(_UNDONE) else decode(text)
                found[target] = entry if isinstance(entry, Swipe) else None
        return found

    async def last(self, user_id: uuid.UUID) -> Swipe | None:
        value = await self._redis.get(self._keys(user_id)[2])
        entry = None if value is None else decode(value)
        return entry if isinstance(entry, Swipe) else None

    async def enqueue_undo(self, last: Swipe, at: datetime, quotas: Sequence[str]) -> bool:
        undo = Undo(last.user_id, last.target_id, at)
        keys = self._keys(last.user_id) + [self._quota_key(last.user_id, kind) for kind in quotas]
        done = await durably(self._redis, self._replicas, self._timeout, self._undo, keys,
                             [str(last.target_id), encode(last), encode(undo), self.tombstone(undo), self._token(last)])
        return bool(done)

    async def forget(self, partition: int, written: list[tuple[SwipeEntry, str]]) -> None:
        """Drops applied entries from the pending maps (they are in PostgreSQL now)."""
        if not written:
            return
        stream = self._spec.key(partition)
        keys, args = [], []
        for entry, encoded in written:
            keys.append(f"{stream}:pending:{entry.user_id}")
            args += [str(entry.target_id), self.tombstone(entry) if isinstance(entry, Undo) else encoded]
        await self._forget(keys, args)
