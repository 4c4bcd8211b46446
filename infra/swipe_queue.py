import json
import uuid
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from domain.swipes import Direction, Swipe, SwipeEntry, Undo
from infra.redis_client import durably
from infra.streams import StreamSpec

SWIPE_WRITER = "swipe-writer"
_UNDONE = "undone"

# All three keys carry the partition's hash tag, so the check, the append and the bookkeeping are one
# atomic step on one cluster slot: an acknowledged swipe is in the stream, and never twice.
_ENQUEUE = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and string.sub(current, 1, 7) ~= 'undone:' then return current end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return ARGV[2]
"""
_UNDO = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('DEL', KEYS[3])
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


def encode(entry: SwipeEntry) -> str:
    at = round(entry.at.timestamp() * 1000)
    if isinstance(entry, Undo):
        return json.dumps({"k": "u", "u": str(entry.user_id), "t": str(entry.target_id), "at": at})
    return json.dumps({"k": "s", "u": str(entry.user_id), "t": str(entry.target_id), "d": entry.direction.value[0],
                       "s": int(entry.super_like), "at": at}, separators=(",", ":"))


def decode(raw: str | bytes) -> SwipeEntry:
    data = json.loads(raw)
    user, target = uuid.UUID(data["u"]), uuid.UUID(data["t"])
    at = datetime.fromtimestamp(data["at"] / 1000, UTC)
    if data["k"] == "u":
        return Undo(user, target, at)
    direction = Direction.LIKE if data["d"] == "L" else Direction.DISLIKE
    return Swipe(user, target, direction, bool(data["s"]), at)


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

    async def enqueue(self, swipe: Swipe) -> Swipe:
        encoded = encode(swipe)
        result = await durably(self._redis, self._replicas, self._timeout, self._enqueue,
                               self._keys(swipe.user_id), [str(swipe.target_id), encoded, self._undo_ms])
        earlier = decode(result) if result != encoded.encode() else swipe
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

    async def enqueue_undo(self, last: Swipe, at: datetime) -> bool:
        undo = Undo(last.user_id, last.target_id, at)
        done = await durably(self._redis, self._replicas, self._timeout, self._undo, self._keys(last.user_id),
                             [str(last.target_id), encode(last), encode(undo), self.tombstone(undo)])
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
