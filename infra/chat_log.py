import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
from broadcaster import Broadcast
from redis.exceptions import RedisError

from domain.chat import ChatEvent, Message, chat_closed
from domain.errors import Code, DomainError
from infra.broadcast import BroadcastConnectionLost
from infra.chat_codec import closed_event, decode_event, decode_message, encode_event, message_tail
from infra.redis_client import NotDurable, durably, sharded_pubsub
from infra.streams import StreamSpec

CHAT_PUSHER = "chat-pusher"
CHAT_AGGREGATOR = "chat-aggregator"  # acknowledges once its log has an entry; trims once the archive does
CLIENT_ID_TTL_MS = 24 * 3600 * 1000  # a retry within a day returns the original message
T = TypeVar("T")

# Every key of a chat carries its partition's hash tag, so the duplicate check, the numbering, the
# append to the stream and the recent store are one atomic step on one cluster slot: numbers are
# handed out in order without gaps whoever sends, and an acknowledged message is in both places.
_SEND = """
local prior = redis.call('GET', KEYS[3])
if prior then return {1, prior} end
local state = redis.call('HMGET', KEYS[2], 'seq', 'ceil', 'closed')
if state[3] then return {3} end
if not state[1] or not state[2] or tonumber(state[1]) >= tonumber(state[2]) then return {2} end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local msg = '{"seq":' .. seq .. ',' .. ARGV[1]
redis.call('XADD', KEYS[1], '*', 'm', msg)
redis.call('ZADD', KEYS[4], seq, msg)
local cap = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[4]) > cap then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -cap - 1) end
redis.call('SET', KEYS[3], msg, 'PX', ARGV[2])
-- Whoever writes has read everything before: unread counts only what came after one's last word.
redis.call('HSET', KEYS[5], ARGV[4], seq)
return {0, msg}
"""
# A counter that exists continues where it is (the reserved ranges are contiguous, so the highest
# ceiling covers it); one that does not (a new chat, or Redis lost it) starts at the floor.
_EXTEND = """
redis.call('HSETNX', KEYS[1], 'seq', ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'ceil') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'ceil', ARGV[2])
end
return 1
"""
# The stream carries the closing after every message before it (the pusher tells subscribers in
# order); the direct PUBLISH ends subscriptions at once even while no pusher runs. Sharded pub/sub
# (a cluster) publishes after the script instead: the channel's slot is not the stream's.
_CLOSE = """
if redis.call('HSETNX', KEYS[2], 'closed', '1') == 1 then redis.call('XADD', KEYS[1], '*', 'c', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""
_MARK_READ = """
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > now then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return tonumber(ARGV[2]) end
return now
"""


def chats_spec(prefix: str, partitions: int) -> StreamSpec:
    return StreamSpec("chats", partitions, prefix, (CHAT_PUSHER, CHAT_AGGREGATOR), held=(CHAT_AGGREGATOR,))


def chat_channel(prefix: str, chat_id: uuid.UUID) -> str:
    return f"{prefix}{{c:{chat_id}}}:events"


async def _redis(call: Awaitable[T]) -> T:
    # Redis away, or replicas that did not confirm in time: the client may retry (a send with the
    # same client id then returns the message if it did go through).
    try:
        return await call
    except (RedisError, OSError, NotDurable) as error:
        raise DomainError(Code.UNAVAILABLE, "Chat is briefly unavailable; try again") from error


class RedisChatLog:
    def __init__(self, redis: aioredis.Redis, spec: StreamSpec, recent: int = 1000, ack_replicas: int = 0,
                 ack_timeout_ms: int = 500) -> None:
        self._redis, self._spec, self._recent = redis, spec, recent
        self._replicas, self._timeout = ack_replicas, ack_timeout_ms
        self._send = redis.register_script(_SEND)
        self._extend = redis.register_script(_EXTEND)
        self._close = redis.register_script(_CLOSE)
        self._mark = redis.register_script(_MARK_READ)

    def _base(self, chat_id: uuid.UUID) -> str:
        return self._spec.key(self._spec.partition_of(str(chat_id)))

    def state_key(self, chat_id: uuid.UUID) -> str:
        return f"{self._base(chat_id)}:chat:{chat_id}"

    def recent_key(self, chat_id: uuid.UUID) -> str:
        return f"{self._base(chat_id)}:recent:{chat_id}"

    def _read_key(self, chat_id: uuid.UUID) -> str:
        return f"{self._base(chat_id)}:read:{chat_id}"

    async def append(self, draft: Message) -> Message | None:
        base = self._base(draft.chat_id)
        client_key = f"{base}:cmid:{draft.chat_id}:{draft.sender_id}:{draft.client_message_id}"
        keys = [base, self.state_key(draft.chat_id), client_key, self.recent_key(draft.chat_id),
                self._read_key(draft.chat_id)]
        reply = await _redis(durably(self._redis, self._replicas, self._timeout, self._send, keys,
                                     [message_tail(draft), CLIENT_ID_TTL_MS, self._recent, str(draft.sender_id)]))
        status = int(reply[0])
        if status == 3:
            raise chat_closed()
        return None if status == 2 else decode_message(reply[1])

    async def extend(self, chat_id: uuid.UUID, floor: int, ceiling: int) -> None:
        await _redis(durably(self._redis, self._replicas, self._timeout, self._extend, [self.state_key(chat_id)],
                             [floor, ceiling]))

    async def page(self, chat_id: uuid.UUID, after: int | None, before: int | None, limit: int,
                   newest: bool = False) -> list[Message]:
        low = "-inf" if after is None else f"({after}"
        high = "+inf" if before is None else f"({before}"
        key = self.recent_key(chat_id)
        if newest:
            raw = await _redis(self._redis.zrevrangebyscore(key, high, low, start=0, num=limit))
            raw.reverse()
        else:
            raw = await _redis(self._redis.zrangebyscore(key, low, high, start=0, num=limit))
        return [decode_message(item) for item in raw if isinstance(item, bytes | str)]

    async def latest_seq(self, chat_id: uuid.UUID) -> int:
        return int(await _redis(self._redis.hget(self.state_key(chat_id), "seq")) or 0)

    async def close(self, chat_id: uuid.UUID) -> None:
        channel, event = chat_channel(self._spec.prefix, chat_id), closed_event(chat_id)
        sharded = await _redis(sharded_pubsub(self._redis))
        await _redis(self._close([self._base(chat_id), self.state_key(chat_id)],
                                 [str(chat_id), "" if sharded else channel, event]))
        if sharded:
            await _redis(self._redis.spublish(channel, event))

    async def mark_read(self, chat_id: uuid.UUID, user_id: uuid.UUID, seq: int) -> int:
        return int(await _redis(self._mark([self._read_key(chat_id)], [str(user_id), seq])))

    async def read_up_to(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> int:
        return int(await _redis(self._redis.hget(self._read_key(chat_id), str(user_id))) or 0)

    async def summary(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Message | None, int]:
        """The newest message and how many came after the user's read position (or last message)."""
        key = self.recent_key(chat_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(key, -1, -1)
            pipe.hget(self._read_key(chat_id), str(user_id))
            newest, read = await _redis(pipe.execute())
        if not newest:
            return None, 0
        unread = await _redis(self._redis.zcount(key, f"({int(read or 0)}", "+inf"))
        return decode_message(newest[0]), int(unread)

    async def take_typing(self, chat_id: uuid.UUID, user_id: uuid.UUID, every_seconds: int) -> bool:
        key = f"{self._base(chat_id)}:typing:{chat_id}:{user_id}"
        return bool(await _redis(self._redis.set(key, 1, nx=True, ex=every_seconds)))


class RedisChatBus:
    def __init__(self, broadcast: Broadcast, prefix: str) -> None:
        self._broadcast, self._prefix = broadcast, prefix

    async def publish(self, event: ChatEvent) -> None:
        await _redis(self._broadcast.publish(chat_channel(self._prefix, event.chat_id), encode_event(event)))

    def subscribe(self, chat_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncIterator[ChatEvent]]:
        return _ChatEvents(self._broadcast.subscribe(chat_channel(self._prefix, chat_id)))


def _unavailable() -> DomainError:
    return DomainError(Code.UNAVAILABLE, "Live events are unavailable; subscribe again")


class _ChatEvents(AbstractAsyncContextManager[AsyncIterator[ChatEvent]], AsyncIterator[ChatEvent]):
    """A chat's live events, as classes rather than a context-manager generator and an event
    generator: nothing suspended to hold while an idle subscription lasts (thousands per process)."""

    __slots__ = ("_subscriber", "_subscription")

    def __init__(self, subscription: AbstractAsyncContextManager[Any]) -> None:
        self._subscription = subscription
        self._subscriber: Any = None

    async def __aenter__(self) -> AsyncIterator[ChatEvent]:
        try:
            self._subscriber = await self._subscription.__aenter__()
        except (RedisError, OSError) as error:  # the subscription itself could not be made
            raise _unavailable() from error
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        try:
            await self._subscription.__aexit__(kind, error, traceback)
        except (RedisError, OSError) as failure:
            raise _unavailable() from failure
        if isinstance(error, RedisError | OSError):
            raise _unavailable() from error

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self

    async def __anext__(self) -> ChatEvent:
        while True:
            try:
                message = await self._subscriber.__anext__()
            except BroadcastConnectionLost:
                raise DomainError(Code.UNAVAILABLE, "Live events were interrupted; subscribe again") from None
            event = decode_event(message.message)
            if event is not None:
                return event
