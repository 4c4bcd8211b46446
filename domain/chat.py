import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from domain.errors import Code, DomainError, InputError, LimitReached, NotFound
from domain.ids import new_id, parse_id
from domain.text import BIDI_OVERRIDES, has_lone_surrogate, visible

MAX_TEXT = 2000
# Numbers a chat takes from PostgreSQL at a time: the only write there per thousand messages, and
# at most that many skipped (never reused) after Redis loses its data.
SEQ_BLOCK = 1000
TYPING_SECONDS = 5  # a typing indicator shows this long unless renewed
TYPING_EVERY_SECONDS = 2  # at most one typing signal per person and chat in this time
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_LINE_ENDS = re.compile(r"\r\n?")


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    chat_id: uuid.UUID
    seq: int  # 0 until the chat log numbers it
    sender_id: uuid.UUID
    recipient_id: uuid.UUID
    client_message_id: str
    text: str
    sent_at: datetime


@dataclass(frozen=True)
class Membership:
    chat_id: uuid.UUID
    user_id: uuid.UUID
    other_id: uuid.UUID
    ended: bool
    receipts_shared: bool = True  # both share their read receipts: one hiding hides both sides'


@dataclass(frozen=True)
class MessageSent:
    message: Message

    @property
    def chat_id(self) -> uuid.UUID:
        return self.message.chat_id


@dataclass(frozen=True)
class ReadReceipt:
    chat_id: uuid.UUID
    user_id: uuid.UUID
    up_to_seq: int
    private: bool = False  # for the reader's own devices only: one of the two hides receipts


@dataclass(frozen=True)
class Typing:
    chat_id: uuid.UUID
    user_id: uuid.UUID


@dataclass(frozen=True)
class ChatClosed:
    chat_id: uuid.UUID


ChatEvent = MessageSent | ReadReceipt | Typing | ChatClosed


class Memberships(Protocol):
    # None when there is no such chat or the user is not in it: the caller cannot tell which.
    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None: ...


class Sequences(Protocol):
    """The durable high-water mark of each chat's numbers."""

    # Reserves `count` more numbers above every number reserved before and, before any other
    # reservation of that chat, awaits apply(floor, ceiling): blocks reach the log in the order they
    # were reserved, so racing first senders of a new chat still start it at 1.
    async def reserve(self, chat_id: uuid.UUID, count: int,
                      apply: Callable[[int, int], Awaitable[None]]) -> None: ...


class ChatLog(Protocol):
    """Each chat's numbered messages: the stream the pusher reads and the recent store histories read."""

    # One atomic step: the original message if its sender already used that client id in that chat;
    # else None when the chat has no reserved numbers left (reserve, extend, try again); else the
    # message numbered, appended to the stream and stored. DomainError CHAT_CLOSED once closed.
    async def append(self, draft: Message) -> Message | None: ...
    # Allows numbers up to `ceiling`; a chat without a counter (new, or Redis lost it) continues
    # from `floor`, which is above every number handed out before.
    async def extend(self, chat_id: uuid.UUID, floor: int, ceiling: int) -> None: ...
    # Ascending by seq; strictly between after and before; the oldest `limit` or, newest=True, the
    # newest `limit` of those.
    async def page(self, chat_id: uuid.UUID, after: int | None, before: int | None, limit: int,
                   newest: bool = False) -> list[Message]: ...
    async def latest_seq(self, chat_id: uuid.UUID) -> int: ...
    async def close(self, chat_id: uuid.UUID) -> None: ...
    async def mark_read(self, chat_id: uuid.UUID, user_id: uuid.UUID, seq: int) -> int: ...  # the pointer now
    async def read_up_to(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> int: ...
    async def take_typing(self, chat_id: uuid.UUID, user_id: uuid.UUID, every_seconds: int) -> bool: ...
    # The newest message, and how many came after the user's read position or their own last message.
    async def summary(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Message | None, int]: ...


class ChatBus(Protocol):
    """Live chat events between processes (Redis pub/sub)."""

    async def publish(self, event: ChatEvent) -> None: ...
    # Raises DomainError UNAVAILABLE while iterating when events may have been missed.
    def subscribe(self, chat_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncIterator[ChatEvent]]: ...


@dataclass(frozen=True)
class ChatDeps:
    members: Memberships
    sequences: Sequences
    log: ChatLog
    bus: ChatBus


def clean_message(text: str) -> str:
    # Refused before anything else: a lone surrogate would pass the checks below and then fail at
    # the first UTF-8 encode (Redis, the database driver), far from here.
    if has_lone_surrogate(text):
        raise InputError(Code.INVALID_TEXT, "text contains an unpaired UTF-16 surrogate", "text")
    if len(text) > MAX_TEXT * 4:  # before normalising a megabyte only to refuse it
        raise InputError(Code.TEXT_TOO_LONG, f"text is longer than {MAX_TEXT} characters", "text")
    # Unassigned and private-use characters stay: a newer emoji is unassigned to an older Python.
    body = unicodedata.normalize("NFC", _LINE_ENDS.sub("\n", text))
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in body):
        raise InputError(Code.INVALID_TEXT, "text contains a control character", "text")
    # Embeddings, isolates and marks stay: they are how mixed Arabic or Hebrew and Latin text reads right.
    if BIDI_OVERRIDES.intersection(body):
        raise InputError(Code.INVALID_TEXT, "text contains a bidirectional override", "text")
    if len(body) > MAX_TEXT:
        raise InputError(Code.TEXT_TOO_LONG, f"text is longer than {MAX_TEXT} characters", "text")
    if not visible(body):
        raise InputError(Code.TEXT_TOO_SHORT, "text is empty", "text")
    return body


def check_client_id(raw: str) -> str:
    if _CLIENT_ID.fullmatch(raw) is None:
        raise InputError(Code.INVALID_INPUT, "clientMessageId: 1 to 64 of A-Z a-z 0-9 . _ : -",
                         "clientMessageId")
    return raw


def chat_closed() -> DomainError:
    return DomainError(Code.CHAT_CLOSED, "This chat has ended")


async def membership(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str) -> Membership:
    """The viewer's place in a chat; a chat they are not in does not exist for them."""
    chat_id = parse_id(raw_chat_id)
    found = None if chat_id is None else await deps.members.member(user_id, chat_id)
    if found is None:
        raise NotFound("Chat")
    return found


async def open_membership(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str) -> Membership:
    found = await membership(deps, user_id, raw_chat_id)
    if found.ended:
        raise chat_closed()
    return found


async def send(deps: ChatDeps, sender_id: uuid.UUID, raw_chat_id: str, client_message_id: str, text: str,
               now: datetime) -> Message:
    member = await open_membership(deps, sender_id, raw_chat_id)
    body, client_id = clean_message(text), check_client_id(client_message_id)
    at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # what the log keeps
    draft = Message(new_id(round(at.timestamp() * 1000)), member.chat_id, 0, sender_id, member.other_id, client_id,
                    body, at)
    # Twice is enough: one reservation covers a thousand messages, however many processes race.
    for _ in range(3):
        sent = await deps.log.append(draft)
        if sent is not None:
            return sent
        await deps.sequences.reserve(member.chat_id, SEQ_BLOCK,
                                     lambda floor, ceiling: deps.log.extend(member.chat_id, floor, ceiling))
    raise DomainError(Code.UNAVAILABLE, "Could not number the message; try again")


async def mark_read(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str, up_to_seq: int) -> int:
    member = await open_membership(deps, user_id, raw_chat_id)
    if up_to_seq < 0:
        raise InputError(Code.INVALID_INPUT, "upToSeq cannot be negative", "upToSeq")
    # Never past the last message: a receipt must not claim to have read what does not exist yet.
    seq = min(up_to_seq, await deps.log.latest_seq(member.chat_id))
    before = await deps.log.read_up_to(member.chat_id, user_id)
    now_at = await deps.log.mark_read(member.chat_id, user_id, seq)
    if now_at > before:
        await deps.bus.publish(ReadReceipt(member.chat_id, user_id, now_at, private=not member.receipts_shared))
    return now_at


async def set_typing(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str) -> None:
    member = await open_membership(deps, user_id, raw_chat_id)
    if not await deps.log.take_typing(member.chat_id, user_id, TYPING_EVERY_SECONDS):
        raise LimitReached(Code.RATE_LIMITED, "Typing was signalled a moment ago", TYPING_EVERY_SECONDS)
    await deps.bus.publish(Typing(member.chat_id, user_id))


REPLAY_PAGE = 200


async def messages_after(log: ChatLog, chat_id: uuid.UUID, after: int, before: int | None = None
                         ) -> AsyncIterator[Message]:
    while True:
        page = await log.page(chat_id, after, before, REPLAY_PAGE)
        for message in page:
            yield message
        if len(page) < REPLAY_PAGE:
            return
        after = page[-1].seq


async def follow(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str, after_seq: int | None
                 ) -> AsyncIterator[ChatEvent]:
    """Every message after after_seq (from now on when None) in order, then the live events, with
    no gap and no duplicate at the seam; ends after ChatClosed."""
    chat_id = parse_id(raw_chat_id)
    if chat_id is None:
        raise NotFound("Chat")
    # Live first: whatever is published from here on is heard. Then what the store holds already.
    async with deps.bus.subscribe(chat_id) as live:
        member = await membership(deps, user_id, raw_chat_id)
        if member.ended:
            yield ChatClosed(chat_id)
            return
        last = await deps.log.latest_seq(chat_id) if after_seq is None else max(after_seq, 0)
        async for message in messages_after(deps.log, chat_id, last):
            yield MessageSent(message)
            last = message.seq
        async for event in live:
            if isinstance(event, MessageSent):
                seq = event.message.seq
                if seq <= last:
                    continue  # replayed already, or heard twice (delivery is at least once)
                # A message is stored before it is published: whatever was skipped live is there.
                async for missed in messages_after(deps.log, chat_id, last, seq):
                    yield MessageSent(missed)
                yield event
                last = seq
            elif isinstance(event, ChatClosed):
                yield event
                return
            elif isinstance(event, ReadReceipt):
                # One's own (read on another device) always; the other's only while both share them.
                if event.user_id == user_id or not event.private:
                    yield event
            elif event.user_id != user_id:  # typing: the other person's only
                yield event


async def history(deps: ChatDeps, user_id: uuid.UUID, raw_chat_id: str, after: int | None, before: int | None,
                  limit: int, newest: bool) -> tuple[Membership, list[Message], bool]:
    """A page of messages, ascending by seq, and whether more lie beyond it in the reading direction."""
    member = await membership(deps, user_id, raw_chat_id)
    if member.ended:
        raise NotFound("Chat")  # an ended match is gone for both, with its chat
    found = await deps.log.page(member.chat_id, after, before, limit + 1, newest)
    more = len(found) > limit
    if more:
        found = found[1:] if newest else found[:limit]
    return member, found, more
