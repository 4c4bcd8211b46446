import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from domain import chat
from domain.chat import (
    SEQ_BLOCK,
    ChatClosed,
    ChatDeps,
    ChatEvent,
    Membership,
    Message,
    MessageSent,
    ReadReceipt,
    Typing,
    chat_closed,
    check_client_id,
    clean_message,
)
from domain.errors import Code, DomainError, InputError, NotFound

NOW = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FakeMembers:
    def __init__(self) -> None:
        self.rows: dict[tuple[uuid.UUID, uuid.UUID], Membership] = {}

    def match(self, a: uuid.UUID, b: uuid.UUID) -> uuid.UUID:
        chat_id = uuid.uuid4()
        self.rows[a, chat_id] = Membership(chat_id, a, b, False)
        self.rows[b, chat_id] = Membership(chat_id, b, a, False)
        return chat_id

    def end(self, chat_id: uuid.UUID) -> None:
        for key, row in list(self.rows.items()):
            if row.chat_id == chat_id:
                self.rows[key] = replace(row, ended=True)

    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        return self.rows.get((user_id, chat_id))


class FakeSequences:
    def __init__(self) -> None:
        self.reserved: dict[uuid.UUID, int] = {}
        self.lock = asyncio.Lock()  # the database's per-chat lock, for every chat at once

    async def reserve(self, chat_id: uuid.UUID, count: int, apply: Callable[[int, int], Awaitable[None]]) -> None:
        await asyncio.sleep(0)  # another sender may run meanwhile, as with a real database
        async with self.lock:
            self.reserved[chat_id] = self.reserved.get(chat_id, 0) + count
            await apply(self.reserved[chat_id] - count, self.reserved[chat_id])


class FakeLog:
    """The Redis chat log's rules, in memory; lose() is Redis losing its data."""

    def __init__(self) -> None:
        self.state: dict[uuid.UUID, dict[str, int]] = {}
        self.stored: dict[uuid.UUID, list[Message]] = {}
        self.by_client: dict[tuple[uuid.UUID, uuid.UUID, str], Message] = {}
        self.read: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        self.typing: set[tuple[uuid.UUID, uuid.UUID]] = set()

    def lose(self) -> None:
        self.__init__()  # type: ignore[misc]

    async def append(self, draft: Message) -> Message | None:
        prior = self.by_client.get((draft.chat_id, draft.sender_id, draft.client_message_id))
        if prior is not None:
            return prior
        state = self.state.get(draft.chat_id, {})
        if state.get("closed"):
            raise chat_closed()
        if "seq" not in state or "ceil" not in state or state["seq"] >= state["ceil"]:
            return None
        state["seq"] += 1
        message = replace(draft, seq=state["seq"])
        self.stored.setdefault(draft.chat_id, []).append(message)
        self.by_client[draft.chat_id, draft.sender_id, draft.client_message_id] = message
        return message

    async def extend(self, chat_id: uuid.UUID, floor: int, ceiling: int) -> None:
        state = self.state.setdefault(chat_id, {})
        state.setdefault("seq", floor)
        state["ceil"] = max(state.get("ceil", 0), ceiling)

    async def page(self, chat_id: uuid.UUID, after: int | None, before: int | None, limit: int,
                   newest: bool = False) -> list[Message]:
        found = [m for m in self.stored.get(chat_id, []) if (after is None or m.seq > after)
                 and (before is None or m.seq < before)]
        return found[-limit:] if newest else found[:limit]

    async def latest_seq(self, chat_id: uuid.UUID) -> int:
        return self.state.get(chat_id, {}).get("seq", 0)

    async def close(self, chat_id: uuid.UUID) -> None:
        self.state.setdefault(chat_id, {})["closed"] = 1

    async def mark_read(self, chat_id: uuid.UUID, user_id: uuid.UUID, seq: int) -> int:
        self.read[chat_id, user_id] = max(self.read.get((chat_id, user_id), 0), seq)
        return self.read[chat_id, user_id]

    async def read_up_to(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> int:
        return self.read.get((chat_id, user_id), 0)

    async def summary(self, chat_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Message | None, int]:
        stored = self.stored.get(chat_id, [])
        read = max([self.read.get((chat_id, user_id), 0)] + [m.seq for m in stored if m.sender_id == user_id])
        return (stored[-1] if stored else None), sum(m.seq > read for m in stored)

    async def take_typing(self, chat_id: uuid.UUID, user_id: uuid.UUID, every_seconds: int) -> bool:
        if (chat_id, user_id) in self.typing:
            return False
        self.typing.add((chat_id, user_id))
        return True


class FakeBus:
    def __init__(self) -> None:
        self.published: list[ChatEvent] = []
        self.live: asyncio.Queue[ChatEvent] = asyncio.Queue()
        self.subscribed = asyncio.Event()

    async def publish(self, event: ChatEvent) -> None:
        self.published.append(event)

    @asynccontextmanager
    async def subscribe(self, chat_id: uuid.UUID) -> AsyncIterator[AsyncIterator[ChatEvent]]:
        self.subscribed.set()
        yield self._events()

    async def _events(self) -> AsyncIterator[ChatEvent]:
        while True:
            yield await self.live.get()


class World:
    def __init__(self) -> None:
        self.members, self.sequences, self.log, self.bus = FakeMembers(), FakeSequences(), FakeLog(), FakeBus()
        self.deps = ChatDeps(self.members, self.sequences, self.log, self.bus)
        self.ann, self.bob = uuid.uuid4(), uuid.uuid4()
        self.chat = self.members.match(self.ann, self.bob)

    async def send(self, text: str = "hi", sender: uuid.UUID | None = None, cmid: str | None = None) -> Message:
        return await chat.send(self.deps, sender or self.ann, str(self.chat), cmid or uuid.uuid4().hex, text, NOW)


@pytest.fixture
def w() -> World:
    return World()


def test_text_is_normalised_and_checked() -> None:
    assert clean_message("Cafe\u0301") == "Caf\u00e9"
    assert clean_message("one\r\ntwo\rthree\tfour") == "one\ntwo\nthree\tfour"
    assert clean_message("e\u0301" * 2000) == "\u00e9" * 2000  # counted after NFC
    assert clean_message("\U0001f469\u200d\U0001f4bb \U0001fae8") == "\U0001f469\u200d\U0001f4bb \U0001fae8"
    assert clean_message("  padded  ") == "  padded  "  # the sender's spacing is theirs
    mixed = "\u05e9\u05dc\u05d5\u05dd \u2067abc\u2069 \u200f!"  # Hebrew, an isolated Latin word, a mark
    assert clean_message(mixed) == mixed
    for bad, code in (("", Code.TEXT_TOO_SHORT), (" \n\t", Code.TEXT_TOO_SHORT), ("\u200b", Code.TEXT_TOO_SHORT),
                      ("x" * 2001, Code.TEXT_TOO_LONG), ("x" * 9000, Code.TEXT_TOO_LONG),
                      ("a\x00b", Code.INVALID_TEXT), ("a\x1bb", Code.INVALID_TEXT), ("a\x7fb", Code.INVALID_TEXT),
                      ("a\x85b", Code.INVALID_TEXT), ("half \ud83d", Code.INVALID_TEXT),
                      ("\udc00 low", Code.INVALID_TEXT), ("see \u202egpj.exe", Code.INVALID_TEXT),
                      ("\u202dabc", Code.INVALID_TEXT)):
        with pytest.raises(InputError) as refused:
            clean_message(bad)
        assert (refused.value.code, refused.value.field) == (code, "text"), repr(bad)


def test_client_message_ids() -> None:
    assert check_client_id(str(uuid.uuid4())) and check_client_id("a.b_c:d-1")
    for bad in ("", "x" * 65, "has space", "ünï", "a\nb", "{tag}"):
        with pytest.raises(InputError):
            check_client_id(bad)


async def test_numbers_are_gap_free_under_concurrent_senders(w: World) -> None:
    sent = await asyncio.gather(*(w.send(f"m{i}", (w.ann, w.bob)[i % 2]) for i in range(2 * SEQ_BLOCK + 50)))
    assert sorted(m.seq for m in sent) == list(range(1, 2 * SEQ_BLOCK + 51))
    assert w.sequences.reserved[w.chat] >= 2 * SEQ_BLOCK + 50
    assert sent[0].sent_at == NOW.replace(microsecond=123000) and sent[0].recipient_id == w.bob


async def test_numbering_resumes_above_everything_after_the_log_loses_its_data(w: World) -> None:
    before = [await w.send() for _ in range(7)]
    w.log.lose()
    after = [await w.send() for _ in range(3)]
    assert after[0].seq > before[-1].seq
    assert [m.seq for m in after] == [after[0].seq, after[0].seq + 1, after[0].seq + 2]


async def test_a_retry_returns_the_original(w: World) -> None:
    first = await w.send("once", cmid="c1")
    assert await w.send("changed", cmid="c1") == first
    assert (await w.send("other sender", w.bob, cmid="c1")).seq == first.seq + 1


async def test_only_the_two_of_a_live_match_may_send(w: World) -> None:
    eve = uuid.uuid4()
    for raw in (str(w.chat), str(uuid.uuid4()), "nope"):
        with pytest.raises(NotFound):
            await chat.send(w.deps, eve, raw, "c", "hi", NOW)
    w.members.end(w.chat)
    with pytest.raises(DomainError) as closed:
        await w.send()
    assert closed.value.code is Code.CHAT_CLOSED


async def test_a_chat_closed_in_redis_refuses_even_before_the_match_row_says_so(w: World) -> None:
    await w.log.close(w.chat)
    with pytest.raises(DomainError) as closed:
        await w.send()
    assert closed.value.code is Code.CHAT_CLOSED


async def test_receipts_never_run_ahead_nor_back(w: World) -> None:
    for _ in range(3):
        await w.send(sender=w.bob)
    assert await chat.mark_read(w.deps, w.ann, str(w.chat), 99) == 3
    assert await chat.mark_read(w.deps, w.ann, str(w.chat), 1) == 3
    assert len(w.bus.published) == 1  # the second one changed nothing
    with pytest.raises(InputError):
        await chat.mark_read(w.deps, w.ann, str(w.chat), -1)


async def test_typing_is_rate_limited(w: World) -> None:
    await chat.set_typing(w.deps, w.ann, str(w.chat))
    with pytest.raises(DomainError) as limited:
        await chat.set_typing(w.deps, w.ann, str(w.chat))
    assert limited.value.code is Code.RATE_LIMITED
    assert w.bus.published == [Typing(w.chat, w.ann)]


async def _collect(events: AsyncIterator[ChatEvent], until_seq: int) -> list[ChatEvent]:
    got: list[ChatEvent] = []
    async with asyncio.timeout(2):
        async for event in events:
            got.append(event)
            if isinstance(event, ChatClosed) or (isinstance(event, MessageSent) and event.message.seq >= until_seq):
                return got
    return got


async def test_the_replay_seam_has_no_gap_and_no_duplicate(w: World) -> None:
    stored = [await w.send(f"m{i}") for i in range(5)]
    following = chat.follow(w.deps, w.bob, str(w.chat), 2)
    first = await anext(following)  # subscribed live before replaying
    assert w.bus.subscribed.is_set()
    # Heard live while replaying: 4 and 5 again, then 6, then 8 with 7 missed live (stored though).
    for message in stored[3:]:
        w.bus.live.put_nowait(MessageSent(message))
    six, seven, eight = await w.send("m6"), await w.send("m7"), await w.send("m8")
    w.bus.live.put_nowait(MessageSent(six))
    w.bus.live.put_nowait(Typing(w.chat, w.bob))  # one's own typing is not echoed
    w.bus.live.put_nowait(Typing(w.chat, w.ann))
    w.bus.live.put_nowait(MessageSent(eight))
    w.bus.live.put_nowait(MessageSent(seven))  # late duplicate
    rest = await _collect(following, 8)
    seqs = [e.message.seq for e in [first, *rest] if isinstance(e, MessageSent)]
    assert seqs == [3, 4, 5, 6, 7, 8]
    assert Typing(w.chat, w.ann) in rest and Typing(w.chat, w.bob) not in rest


async def test_without_a_cursor_only_what_comes_next(w: World) -> None:
    await w.send("old")
    following = chat.follow(w.deps, w.bob, str(w.chat), None)
    waiting = asyncio.ensure_future(anext(following))
    await w.bus.subscribed.wait()
    await asyncio.sleep(0)
    new = await w.send("new")
    w.bus.live.put_nowait(MessageSent(new))
    event = await asyncio.wait_for(waiting, 2)
    assert isinstance(event, MessageSent) and event.message.seq == 2


async def test_following_ends_with_the_chat(w: World) -> None:
    await w.send()
    following = chat.follow(w.deps, w.bob, str(w.chat), 0)
    assert isinstance(await anext(following), MessageSent)
    w.bus.live.put_nowait(ChatClosed(w.chat))
    assert await anext(following) == ChatClosed(w.chat)
    with pytest.raises(StopAsyncIteration):
        await anext(following)
    w.members.end(w.chat)
    assert [e async for e in chat.follow(w.deps, w.bob, str(w.chat), 0)] == [ChatClosed(w.chat)]
    with pytest.raises(NotFound):
        await anext(chat.follow(w.deps, uuid.uuid4(), str(w.chat), 0))



@pytest.mark.parametrize("viewer", ["ann", "bob"])
async def test_a_hidden_receipt_reaches_only_the_readers_own_devices(w: World, viewer: str) -> None:
    await w.send(sender=w.bob)
    for key, row in list(w.members.rows.items()):  # either of them hiding: the chat shares none
        w.members.rows[key] = replace(row, receipts_shared=False)
    await chat.mark_read(w.deps, w.ann, str(w.chat), 1)
    hidden = ReadReceipt(w.chat, w.ann, 1, private=True)
    assert w.bus.published == [hidden]
    following = chat.follow(w.deps, getattr(w, viewer), str(w.chat), 1)
    waiting = asyncio.ensure_future(_collect(following, 2))
    await w.bus.subscribed.wait()
    w.bus.live.put_nowait(hidden)
    w.bus.live.put_nowait(ReadReceipt(w.chat, w.bob, 1))  # a shared one: both hear it
    w.bus.live.put_nowait(MessageSent(await w.send(sender=w.bob)))
    got = await waiting
    assert ReadReceipt(w.chat, w.bob, 1) in got
    assert (hidden in got) == (viewer == "ann")  # her other devices learn it, bob does not
