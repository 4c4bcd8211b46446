"""The chat log, sequences and pusher against the real Redis and PostgreSQL."""
import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from domain import chat
from domain.chat import SEQ_BLOCK, ChatClosed, ChatDeps, Membership, Message, MessageSent
from domain.errors import Code, DomainError
from infra.app import Runtime
from infra.broadcast import make_broadcast
from infra.chat_log import CHAT_PUSHER, RedisChatBus, RedisChatLog, chats_spec
from infra.pg_chats import PgSequences
from infra.pg_fences import PgFences
from infra.streams import PartitionedConsumer, ensure_groups
from tests.services import TestServices
from workers.chat_pusher import ChatPusher, decode_entry

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


class Everyone:
    """Anyone is in every chat with one fixed other person: membership is not what is tested here."""

    def __init__(self) -> None:
        self.other = uuid.uuid4()

    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        return Membership(chat_id, user_id, self.other, False)


@pytest.fixture
def prefix(services: TestServices) -> str:
    return f"{services.redis_prefix}{secrets.token_hex(3)}:"  # a stream of this test's own


@pytest.fixture
async def deps(runtime: Runtime, redis: aioredis.Redis, redis_url: str, prefix: str
               ) -> AsyncIterator[ChatDeps]:
    assert runtime.pool is not None
    async with make_broadcast(redis_url) as broadcast:
        yield ChatDeps(Everyone(), PgSequences(runtime.pool), RedisChatLog(redis, chats_spec(prefix, 4), recent=50),
                       RedisChatBus(broadcast, prefix))


async def test_concurrent_sends_are_numbered_without_gaps(deps: ChatDeps) -> None:
    chat_id, ann = uuid.uuid4(), uuid.uuid4()
    count = SEQ_BLOCK + 200  # across a reservation, with senders racing for it
    gate = asyncio.Semaphore(100)  # as many at once as the client's connection pool allows

    async def one(i: int) -> Message:
        async with gate:
            return await chat.send(deps, ann, str(chat_id), f"c{i}", f"text {i}", NOW)

    sent = await asyncio.gather(*(one(i) for i in range(count)))
    assert sorted(m.seq for m in sent) == list(range(1, count + 1))
    # The recent store keeps the newest 50, in order, as they were acknowledged.
    page = await deps.log.page(chat_id, None, None, 100)
    assert [m.seq for m in page] == list(range(count - 49, count + 1))
    by_seq = {m.seq: m for m in sent}
    assert all(by_seq[m.seq] == m for m in page)


async def test_after_redis_forgets_a_chat_its_numbers_resume_above_all(deps: ChatDeps, redis: aioredis.Redis,
                                                                        prefix: str) -> None:
    chat_id, ann = uuid.uuid4(), uuid.uuid4()
    for i in range(3):
        await chat.send(deps, ann, str(chat_id), f"c{i}", "before", NOW)
    await redis.delete(*[key async for key in redis.scan_iter(match=f"{prefix}*")])
    after = await chat.send(deps, ann, str(chat_id), "later", "after", NOW)
    assert after.seq == SEQ_BLOCK + 1  # above the whole block the lost counter could have used
    again = await chat.send(deps, ann, str(chat_id), "later", "retried", NOW)
    assert again == after


async def test_closing_refuses_sends_and_is_idempotent(deps: ChatDeps) -> None:
    chat_id, ann = uuid.uuid4(), uuid.uuid4()
    await chat.send(deps, ann, str(chat_id), "c", "hi", NOW)
    await deps.log.close(chat_id)
    await deps.log.close(chat_id)
    with pytest.raises(DomainError) as closed:
        await chat.send(deps, ann, str(chat_id), "d", "hi", NOW)
    assert closed.value.code is Code.CHAT_CLOSED


async def test_the_pusher_delivers_in_order_then_the_closing(deps: ChatDeps, runtime: Runtime,
                                                              redis: aioredis.Redis, redis_url: str,
                                                              prefix: str) -> None:
    assert runtime.pool is not None
    spec = chats_spec(prefix, 4)
    await ensure_groups(redis, spec)
    chat_id, ann = uuid.uuid4(), uuid.uuid4()
    async with deps.bus.subscribe(chat_id) as live, make_broadcast(redis_url) as broadcast:
        sent = [await chat.send(deps, ann, str(chat_id), f"c{i}", f"m{i}", NOW) for i in range(20)]
        await deps.log.close(chat_id)
        consumer = PartitionedConsumer(redis, spec, CHAT_PUSHER, "test", decode_entry, ChatPusher(broadcast, prefix),
                                       PgFences(runtime.pool, spec.scope), lease_seconds=2)
        await consumer.run(until_idle=True)
        heard = []
        async with asyncio.timeout(5):
            async for event in live:
                heard.append(event)
                if isinstance(event, ChatClosed) and len(heard) > 20:
                    break
    # The closing is published at once, and again by the pusher after the messages, in stream order.
    messages = [e.message for e in heard if isinstance(e, MessageSent)]
    assert messages == sent
    assert heard[-1] == ChatClosed(chat_id)
