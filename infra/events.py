import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

from broadcaster import Broadcast, Event
from redis.exceptions import RedisError

from domain.errors import Code, DomainError
from domain.events import (
    MatchCreated,
    MatchEnded,
    MessagePosted,
    PhotoChanged,
    ProfileChanged,
    SessionsEnded,
    UserEvent,
)
from infra.broadcast import BroadcastConnectionLost, listen
from infra.chat_codec import decode_message, encode_message


def new_message_event(user_id: uuid.UUID, raw_message: str) -> str:
    # The message's stored JSON as it is: the chat pusher forwards thousands a second.
    return f'{{"type": "new_message", "user": "{user_id}", "m": {raw_message}}}'


def encode(event: UserEvent) -> str:
    if isinstance(event, MessagePosted):
        return new_message_event(event.user_id, encode_message(event.message))
    if isinstance(event, SessionsEnded):
        ids = None if event.session_ids is None else [str(s) for s in event.session_ids]
        return json.dumps({"type": "sessions_ended", "user": str(event.user_id), "sessions": ids,
                           "reason": event.reason})
    if isinstance(event, MatchCreated | MatchEnded):
        kind = "match_created" if isinstance(event, MatchCreated) else "match_ended"
        at = event.created_at if isinstance(event, MatchCreated) else None
        # What json.dumps makes of these strings, in a fifth of the time (the swipe writer announces
        # thousands a second); ids print as hex and hyphens, nothing to escape.
        moment = "" if at is None else f', "at": {round(at.timestamp() * 1000)}'
        return (f'{{"type": "{kind}", "user": "{event.user_id}", "match": "{event.match_id}",'
                f' "other": "{event.other_id}"{moment}}}')
    if isinstance(event, PhotoChanged):
        return json.dumps({"type": "photo_changed", "user": str(event.user_id), "photo": str(event.photo_id)})
    return json.dumps({"type": "profile_changed", "user": str(event.user_id)})


def decode(raw: str) -> UserEvent | None:
    data = json.loads(raw)
    user_id = uuid.UUID(data["user"])
    if data["type"] == "sessions_ended":
        ids = None if data["sessions"] is None else tuple(uuid.UUID(s) for s in data["sessions"])
        return SessionsEnded(user_id, ids, data["reason"])
    if data["type"] == "profile_changed":
        return ProfileChanged(user_id)
    if data["type"] == "photo_changed":
        return PhotoChanged(user_id, uuid.UUID(data["photo"]))
    if data["type"] == "new_message":
        return MessagePosted(user_id, decode_message(data["m"]))
    if data["type"] == "match_created":
        at = data.get("at")
        return MatchCreated(user_id, uuid.UUID(data["match"]), uuid.UUID(data["other"]),
                            None if at is None else datetime.fromtimestamp(at / 1000, UTC))
    if data["type"] == "match_ended":
        return MatchEnded(user_id, uuid.UUID(data["match"]), uuid.UUID(data["other"]))
    return None  # a newer process may publish kinds this one does not know yet


class UserChannels:
    """Per-user pub/sub channels: every API process hears the events of the users it serves."""

    def __init__(self, broadcast: Broadcast, prefix: str) -> None:
        self._broadcast = broadcast
        self._prefix = prefix

    def channel(self, user_id: uuid.UUID) -> str:
        # The hash tag keeps a user's channel on the same cluster slot as the user's keys.
        return f"{self._prefix}{{u:{user_id}}}:events"

    async def publish(self, event: UserEvent) -> None:
        await self._broadcast.publish(self.channel(event.user_id), encode(event))

    async def publish_many(self, events: Sequence[UserEvent]) -> None:
        """The same as publishing each in turn, in one round trip where the broadcast allows it."""
        messages = [(self.channel(event.user_id), encode(event)) for event in events]
        many = getattr(self._broadcast, "publish_many", None)
        if many is not None:
            await many(messages)
            return
        for channel, message in messages:
            await self._broadcast.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, user_id: uuid.UUID) -> AsyncIterator[AsyncIterator[UserEvent]]:
        async with AsyncExitStack() as stack:
            try:
                subscriber = await stack.enter_async_context(self._broadcast.subscribe(self.channel(user_id)))
            except (RedisError, OSError):
                # Redis away while subscribing: the same answer as losing it later, never "bad input".
                raise DomainError(Code.UNAVAILABLE, "Live events are unavailable just now; subscribe again") from None
            yield self._events(subscriber)

    async def watch(self, user_id: uuid.UUID, on_event: Callable[[UserEvent | None], None]
                    ) -> Callable[[], Awaitable[None]]:
        """on_event for each of the user's events as it arrives, on_event(None) when some may have been
        missed; returns what stops it. No task or queue of its own: for what every socket watches."""
        def deliver(message: Event | None) -> None:
            event = None if message is None else decode(message.message)
            if message is None or event is not None:
                on_event(event)

        try:
            return await listen(self._broadcast, self.channel(user_id), deliver)
        except (RedisError, OSError):
            raise DomainError(Code.UNAVAILABLE, "Live events are unavailable just now; subscribe again") from None

    @staticmethod
    async def _events(subscriber: object) -> AsyncIterator[UserEvent]:
        try:
            async for message in subscriber:  # type: ignore[attr-defined]
                event = decode(message.message)
                if event is not None:
                    yield event
        except BroadcastConnectionLost:
            raise DomainError(Code.UNAVAILABLE, "Live events were interrupted; subscribe again") from None
