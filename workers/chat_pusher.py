import asyncio
import json
import logging
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from infra.broadcast import make_broadcast
from infra.chat_codec import closed_event, message_event
from infra.chat_log import CHAT_PUSHER, chat_channel, chats_spec
from infra.db import open_pool
from infra.events import UserChannels, new_message_event
from infra.pg_fences import PgFences
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import PartitionedConsumer, StreamSpec, ensure_groups
from workers import new_consumer_id, stop_on_signals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Push:
    chat_id: uuid.UUID
    message: str | None  # the message's JSON as the chat log stored it; None: the chat closed
    members: tuple[uuid.UUID, ...]


def decode_entry(fields: dict[bytes, bytes]) -> Push:
    if b"m" in fields:
        raw = fields[b"m"].decode()
        data = json.loads(raw)
        return Push(uuid.UUID(data["chat"]), raw, (uuid.UUID(data["from"]), uuid.UUID(data["to"])))
    return Push(uuid.UUID(fields[b"c"].decode()), None, ())


class ChatPusher:
    """Tells every API process of each message in order: the chat's subscribers on the chat's
    channel, both members (for badges) on their own."""

    def __init__(self, broadcast: Any, prefix: str) -> None:
        self._broadcast, self._prefix = broadcast, prefix
        self._users = UserChannels(broadcast, prefix)

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, Push]]) -> None:
        messages: list[tuple[str, str]] = []
        for _, push in batch:
            channel = chat_channel(self._prefix, push.chat_id)
            if push.message is None:
                messages.append((channel, closed_event(push.chat_id)))
                continue
            messages.append((channel, message_event(push.message)))
            messages.extend((self._users.channel(user), new_message_event(user, push.message))
                            for user in push.members)
        # One round trip per batch, in order; acknowledged only after it (at least once).
        await self._broadcast.publish_many(messages)


async def keep_groups(redis: Any, spec: StreamSpec, stop: asyncio.Event, every_seconds: float) -> None:
    # A Redis that lost its data lost the consumer groups too, and the consumer only reports NOGROUP:
    # without them again no message sent from then on would be pushed. Created from id 0, a group
    # made late still delivers every entry of the new streams.
    while not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)
        try:
            await ensure_groups(redis, spec)
        except (RedisError, OSError) as error:
            log.warning("chat-pusher: consumer groups not checked: %s", error)


async def main(settings: Settings) -> None:
    stop = stop_on_signals()
    spec = chats_spec(settings.redis_prefix, settings.chat_partitions)
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=2) as pool, make_broadcast(settings.redis_url) as bus:
            await ensure_groups(redis, spec)
            consumer_id = new_consumer_id()
            consumer = PartitionedConsumer(redis, spec, CHAT_PUSHER, consumer_id, decode_entry,
                                           ChatPusher(bus, settings.redis_prefix), PgFences(pool, spec.scope),
                                           lease_seconds=settings.stream_lease_seconds)
            regroup = asyncio.create_task(keep_groups(redis, spec, stop, settings.stream_lease_seconds / 2))
            try:
                await consumer.run(stop=stop)
            finally:
                regroup.cancel()
    finally:
        await redis.aclose()
