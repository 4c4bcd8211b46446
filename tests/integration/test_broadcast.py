import asyncio
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from broadcaster import Broadcast
from broadcaster._base import Subscriber
from redis import asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.broadcast import INBOX_LIMIT, PING_EVERY, SILENCE_LIMIT, BroadcastConnectionLost, make_broadcast
from infra.redis_client import is_cluster_url, node_url
from tests.private_redis import PrivateRedis
from tests.services import TestServices

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # upper bound for anything that should happen "soon"; passing runs take far less

# Runs in a separate OS process: the regression only counts if delivery crosses connections.
SUBSCRIBER = """
import asyncio, sys
from infra.broadcast import make_broadcast

async def main(url: str, channel: str, count: int) -> None:
    async with make_broadcast(url) as broadcast, broadcast.subscribe(channel) as sub:
        print("subscribed", flush=True)
        for _ in range(count):
            print((await sub.get()).message, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.fixture
def prefix() -> str:
    return f"nft-{secrets.token_hex(4)}:"


@pytest.fixture
async def broadcast(redis_url: str) -> AsyncIterator[Broadcast]:
    async with make_broadcast(redis_url) as broadcast:
        yield broadcast


async def _subscribe_once_back(broadcast: Broadcast, channel: str, stack: AsyncExitStack) -> Subscriber:
    # Subscribing fails fast while the backend is reconnecting; success proves it is back.
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await stack.enter_async_context(broadcast.subscribe(channel))
            except RedisConnectionError:
                await asyncio.sleep(0.05)


async def test_events_cross_processes_in_order(broadcast: Broadcast, prefix: str, redis_url: str) -> None:
    channel, messages = prefix + "chat", [f"m{i}" for i in range(20)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBSCRIBER, redis_url, channel, str(len(messages)),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        assert await asyncio.wait_for(process.stdout.readline(), WAIT) == b"subscribed\n"
        for message in messages:
            await broadcast.publish(channel, message)
        received = await asyncio.wait_for(process.stdout.read(), WAIT)
        assert received.decode().split() == messages
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_upstream_redis_backend_still_loses_events(prefix: str, services: TestServices) -> None:
    # Guard: the day this fails, broadcaster's own RedisBackend delivers again and
    # infra/broadcast.py's backend may be retired.
    channel = prefix + "upstream"
    async with Broadcast(services.redis_url) as upstream, upstream.subscribe(channel) as sub:
        await asyncio.sleep(0.2)
        await upstream.publish(channel, "hello")
        try:
            event = await asyncio.wait_for(sub.get(), 1)
        except TimeoutError:
            return
    pytest.fail(f"upstream RedisBackend delivered {event}: the bug infra/broadcast.py works around is fixed")


async def test_many_subscribers_share_one_redis_subscription(
    broadcast: Broadcast, prefix: str, redis_url: str
) -> None:
    channel = prefix + "crowd"
    async with _admin(redis_url, channel) as subscriptions:
        async with broadcast.subscribe(channel) as last:
            async with AsyncExitStack() as stack:
                # Concurrent first subscribers are the case upstream's bookkeeping gets wrong.
                crowd = await asyncio.gather(
                    *(stack.enter_async_context(broadcast.subscribe(channel)) for _ in range(30))
                )
                assert await subscriptions() == 1
                await broadcast.publish(channel, "to all")
                for sub in [*crowd, last]:
                    assert (await asyncio.wait_for(sub.get(), WAIT)).message == "to all"

            assert await subscriptions() == 1
            await broadcast.publish(channel, "to the last")
            assert (await asyncio.wait_for(last.get(), WAIT)).message == "to the last"

        assert await subscriptions() == 0


@asynccontextmanager
async def _admin(redis_url: str, channel: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Counts the subscriptions Redis itself holds for `channel`: on a cluster, sharded ones on the
    node that owns its slot."""
    if not is_cluster_url(redis_url):
        async with redis.Redis.from_url(redis_url) as admin:
            async def plain() -> int:
                return int((await admin.pubsub_numsub(channel))[0][1])
            yield plain
        return
    cluster = RedisCluster.from_url(node_url(redis_url))
    try:
        async def sharded() -> int:
            node = cluster.get_node_from_key(channel)
            reply = await cluster.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
            return int(reply[0][1])
        await cluster.initialize()
        yield sharded
    finally:
        await cluster.aclose()


async def test_killed_redis_is_reported_then_recovered(private_redis: PrivateRedis, prefix: str) -> None:
    channel = prefix + "lost"
    async with make_broadcast(private_redis.url) as broadcast, AsyncExitStack() as stack:
        survivor = await stack.enter_async_context(broadcast.subscribe(channel))
        async with broadcast.subscribe(channel) as leaver:
            await private_redis.kill()
            with pytest.raises(BroadcastConnectionLost):
                async with asyncio.timeout(WAIT):
                    # broadcaster 0.3.1 annotates Subscriber.__aiter__ as possibly returning None.
                    async for _ in leaver:  # type: ignore[union-attr]
                        pass
        with pytest.raises(BroadcastConnectionLost):
            await asyncio.wait_for(survivor.get(), WAIT)
        with pytest.raises(RedisConnectionError):
            await broadcast.publish(channel, "into the void")

        await private_redis.start()
        newcomer = await _subscribe_once_back(broadcast, prefix + "new", stack)
        await broadcast.publish(prefix + "new", "welcome")
        assert (await asyncio.wait_for(newcomer.get(), WAIT)).message == "welcome"
        # The channel that kept a subscriber through the outage was subscribed again.
        await broadcast.publish(channel, "still here?")
        assert (await asyncio.wait_for(survivor.get(), WAIT)).message == "still here?"


async def test_silent_redis_is_reported_by_ping(private_redis: PrivateRedis, prefix: str) -> None:
    # A stopped server keeps the TCP connection open: only unanswered PINGs reveal it.
    channel = prefix + "silent"
    async with make_broadcast(private_redis.url) as broadcast, AsyncExitStack() as stack:
        sub = await stack.enter_async_context(broadcast.subscribe(channel))
        private_redis.signal(signal.SIGSTOP)
        try:
            with pytest.raises(BroadcastConnectionLost):
                await asyncio.wait_for(sub.get(), WAIT)
        finally:
            private_redis.signal(signal.SIGCONT)

        await _subscribe_once_back(broadcast, prefix + "probe", stack)
        await broadcast.publish(channel, "awake")
        assert (await asyncio.wait_for(sub.get(), WAIT)).message == "awake"


async def test_stalled_event_loop_is_not_taken_for_silent_redis(broadcast: Broadcast, prefix: str) -> None:
    # A busy process (here one blocking call) stops reading for longer than Redis may stay silent;
    # Redis answered meanwhile, so its subscribers must stay open and keep hearing.
    channel = prefix + "stall"
    async with broadcast.subscribe(channel) as sub:
        await asyncio.sleep(2.5 * PING_EVERY)  # a few PINGs answered: the reader is in its steady state
        time.sleep(SILENCE_LIMIT + 1)  # noqa: ASYNC251 - the stall is the point
        await asyncio.sleep(2 * PING_EVERY)  # the reader's turns after the stall
        await broadcast.publish(channel, "still here")
        assert (await asyncio.wait_for(sub.get(), WAIT)).message == "still here"


async def test_a_subscriber_too_far_behind_is_told_it_missed_events(broadcast: Broadcast, prefix: str) -> None:
    # Bounded, but never silently: the backlog goes and the subscriber hears of the gap, as after a
    # dropped connection, then gets what comes next.
    channel = prefix + "behind"
    async with broadcast.subscribe(channel) as sub:
        messages = [(channel, f"m{i}") for i in range(INBOX_LIMIT)]
        await broadcast.publish_many(messages)  # type: ignore[attr-defined]
        for _, message in messages:  # up to the bound, nothing is lost
            assert (await asyncio.wait_for(sub.get(), WAIT)).message == message
        await broadcast.publish_many([*messages, (channel, "one too many")])  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)  # all of them arrive, unread
        with pytest.raises(BroadcastConnectionLost):
            async with asyncio.timeout(WAIT):
                while (await sub.get()).message != "one too many":
                    pass
        await broadcast.publish(channel, "next")
        assert (await asyncio.wait_for(sub.get(), WAIT)).message == "next"
