import re
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
# ARGV[1] holds the batch's raw entries, one a line (decode_fields checked their layout): the script
# finds each one's user, target and pending-map value itself, since the writer spent more time packing
# three arguments per entry than Redis spends on the whole loop. The pending maps it touches are named
# after KEYS[1], the partition's stream: one hash tag, so one cluster slot.
_FORGET = """
local prefix, blob, pos = KEYS[1] .. ':pending:', ARGV[1], 1
while pos <= #blob do
  local stop = string.find(blob, '\\n', pos, true) or #blob + 1
  local value = string.sub(blob, pos, stop - 1)
  local key, target = prefix .. string.sub(value, 3, 38), string.sub(value, 40, 75)
  if string.sub(value, 1, 1) == 'U' then value = 'undone:' .. string.sub(value, 77) end
  if redis.call('HGET', key, target) == value then redis.call('HDEL', key, target) end
  pos = stop + 1
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


_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Exactly what encode writes (ids as str(uuid) prints them, milliseconds PostgreSQL can hold), so
# that the writer's SQL can split an entry at fixed places and cannot fail on one.
_ENTRY = re.compile(rf"(?:S\|{_ID}\|{_ID}\|[LD]\|[01]|U\|{_ID}\|{_ID})\|[0-9]{{1,15}}")
# Where the fields sit in a checked entry: S|user|target|L or D|super|ms, U|user|target|ms.
USER, TARGET, DIRECTION, SUPER = slice(2, 38), slice(39, 75), 76, 78


def decode_fields(fields: dict[bytes, bytes]) -> str:
    """A stream entry's raw text, once its layout is checked (ValueError if not: a dead letter).

    The writer hands the text itself to PostgreSQL, which splits it; the pending map is cleaned by
    exact value too, and re-encoding a decoded time could differ in the last millisecond."""
    raw = fields[b"e"].decode()
    if _ENTRY.fullmatch(raw) is None:
        raise ValueError(f"not a swipe entry: {raw[:100]!r}")
    return raw


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

    async def forget(self, partition: int, written: Sequence[str]) -> None:
        """Drops applied entries (raw, as decode_fields returns them) from the pending maps: they are
        in PostgreSQL now."""
        if written:
            await self._forget([self._spec.key(partition)], ["\n".join(written)])
