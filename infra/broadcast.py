# broadcaster over Redis pub/sub, fixing two flaws of broadcaster 0.3.1's RedisBackend:
# with redis-py 8 its listener starts before SUBSCRIBE is done, finds no subscription and parks
# forever; and a dropped connection leaves every subscriber open and deaf. On a Redis Cluster of
# Redis 7+ it uses sharded pub/sub: a channel lives on the shard of its hash tag, so fan-out grows
# with the shards instead of every message crossing every node.
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from functools import partial
from typing import Any, Protocol

from broadcaster import Broadcast, BroadcastBackend, Event
from broadcaster._base import Subscriber, Unsubscribed
from redis import asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis_client import Cluster, is_cluster_url, node_url, sharded_pubsub, single_node
from infra.tasks import stop_task

log = logging.getLogger(__name__)

PING_EVERY = 1.0  # seconds between PINGs on the pub/sub connection
SILENCE_LIMIT = 3.0  # a connection silent this long (PINGs unanswered) counts as dead
LOOP_SLACK = 0.25  # how late an empty read may end and still count whole: beyond, the loop was busy
REPLY_TIMEOUT = 5.0  # connect, send, and wait for a SUBSCRIBE/UNSUBSCRIBE confirmation
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # reconnect delays, doubling


class BroadcastConnectionLost(Exception):
    """The Redis connection dropped: events published meanwhile were missed."""


_PUBLISH_ALL = """
for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return 1
"""

# Compared by identity: the listener puts it in every subscriber queue when the connection drops.
_LOST = Event(channel="", message="")


# No hidden retries: a dropped pub/sub connection must surface here so subscribers hear about the
# gap, and publishing to a dead Redis should fail at once.
_CLIENT_OPTIONS: dict[str, Any] = {
    "retry": Retry(NoBackoff(), 0), "socket_timeout": REPLY_TIMEOUT, "socket_connect_timeout": REPLY_TIMEOUT,
}


class _QueuedBackend(BroadcastBackend):
    # What the connections heard, in order; None: a connection was lost.
    _events: asyncio.Queue[Event | None]

    async def next_published(self) -> Event:
        event = await self._events.get()
        if event is None:
            raise BroadcastConnectionLost()
        return event


class _RedisBackend(_QueuedBackend):
    def __init__(self, client: redis.Redis, *, sharded: bool = False,
                 events: asyncio.Queue[Event | None] | None = None) -> None:
        self._redis = client
        # Sharded: SSUBSCRIBE on the one cluster node that owns every channel given to this backend.
        self._sharded = sharded
        self._message = "smessage" if sharded else "message"
        self._refs: dict[str, int] = {}  # subscribers per channel: what to resubscribe after a drop
        self._pubsub: PubSub | None = None  # None while disconnected
        self._lock = asyncio.Lock()  # one (un)subscribe or resubscribe at a time
        self._awaited: tuple[str, bytes, asyncio.Future[None]] | None = None
        # None: connection lost. Shared by the nodes' backends of one cluster broadcast.
        self._events: asyncio.Queue[Event | None] = asyncio.Queue() if events is None else events
        self._publish_all = self._redis.register_script(_PUBLISH_ALL)
        self._supervisor: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(await self._open()))

    async def disconnect(self) -> None:
        if self._supervisor is not None:
            await stop_task(self._supervisor)
        await self._redis.aclose()

    async def publish(self, channel: str, message: Any) -> None:
        await self._redis.publish(channel, message)

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        # One command for them all, in order: a pipeline costs the client several times more per
        # message than packing two more arguments does.
        await self._publish_all([], [part for message in messages for part in message])

    # Reference counted, so _Broadcast may call it once per subscriber without racing itself.
    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._refs:
                await self._confirmed("subscribe", channel)
            self._refs[channel] = self._refs.get(channel, 0) + 1

    async def unsubscribe(self, channel: str) -> None:
        # Counted before taking the lock, so a caller cancelled while waiting leaks no reference.
        self._refs[channel] -= 1
        if self._refs[channel] == 0:
            del self._refs[channel]
        async with self._lock:
            if channel in self._refs or self._pubsub is None:
                return  # resubscribed meanwhile, or the subscription died with the connection
            # A failure here means the connection is dying; the reader reports that.
            with suppress(RedisError, OSError):
                await self._confirmed("unsubscribe", channel)

    async def _confirmed(self, kind: str, channel: str) -> None:
        # Only Redis's reply, which the reader receives, proves the (un)subscription took effect
        # for publishers on other connections.
        pubsub = self._pubsub
        if pubsub is None:
            raise RedisConnectionError("Redis pub/sub connection is down, reconnecting")
        reply = asyncio.get_running_loop().create_future()
        self._awaited = (("s" + kind) if self._sharded else kind, channel.encode(), reply)
        try:
            if self._sharded:
                await (pubsub.ssubscribe(channel) if kind == "subscribe" else pubsub.sunsubscribe(channel))
            else:
                await (pubsub.subscribe(channel) if kind == "subscribe" else pubsub.unsubscribe(channel))
            await asyncio.wait_for(reply, REPLY_TIMEOUT)
        finally:
            self._awaited = None

    async def _open(self) -> PubSub:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.connect()
            async with self._lock:
                # Replies to this are ignored: the reader is not running yet.
                if self._refs:
                    await (pubsub.ssubscribe if self._sharded else pubsub.subscribe)(*self._refs)
                self._pubsub = pubsub
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _supervise(self, pubsub: PubSub) -> None:
        while True:
            try:
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("Redis pub/sub connection lost, reconnecting: %s", exc)
            except Exception:  # a bug in the reader must still end in a signal, never in silence
                log.exception("Redis pub/sub reader failed, reconnecting")
            finally:
                await self._close(pubsub)
            self._events.put_nowait(None)
            pubsub = await self._reopen()
            log.info("Redis pub/sub connection restored")

    async def _reopen(self) -> PubSub:
        delay = BACKOFF_MIN
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._open()
            except (RedisError, OSError):
                delay = min(delay * 2, BACKOFF_MAX)

    async def _close(self, pubsub: PubSub) -> None:
        self._pubsub = None
        if self._awaited is not None and not self._awaited[2].done():
            self._awaited[2].set_exception(RedisConnectionError("Redis pub/sub connection lost"))
        await pubsub.aclose()

    async def _read(self, pubsub: PubSub) -> None:
        # A killed server shows up at once as a read error; a silent one (stopped, network gone)
        # only as PINGs without replies. Silence counts only waiting the loop was free to do: after
        # a stall (a blocking call elsewhere in the process) the reply is usually waiting in the
        # buffer, and the time the loop spent elsewhere says nothing about Redis.
        clock = asyncio.get_running_loop().time
        silent, pinged = 0.0, clock()
        while True:
            if clock() - pinged >= PING_EVERY:
                await pubsub.ping()
                pinged = clock()
            started = clock()
            message = await pubsub.get_message(timeout=PING_EVERY)
            if message is None:
                # A read timeout that falls due in the same turn of the loop as the reply wins over
                # it (as after a stall): look at what arrived, without waiting.
                message = await pubsub.get_message(timeout=0)
            if message is not None:
                silent = 0.0
                self._dispatch(message)
                continue
            silent += min(clock() - started, PING_EVERY + LOOP_SLACK)
            if silent > SILENCE_LIMIT:
                raise RedisTimeoutError(f"no reply from Redis in {SILENCE_LIMIT} s")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, awaited = message["type"], self._awaited
        if kind == self._message:
            self._events.put_nowait(Event(message["channel"].decode(), message["data"].decode()))
        elif awaited and awaited[:2] == (kind, message["channel"]) and not awaited[2].done():
            awaited[2].set_result(None)


class _ClusterBackend(_QueuedBackend):
    """One connection per primary that holds a subscribed channel's slot (SSUBSCRIBE, Redis 7+), or
    a single one to any node where the cluster only has classic pub/sub (every node hears every
    PUBLISH)."""

    def __init__(self, url: str) -> None:
        self._cluster: RedisCluster = Cluster.from_url(node_url(url), **_CLIENT_OPTIONS)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._nodes: dict[str, _RedisBackend] = {}  # node name -> its subscriptions
        self._channels: dict[str, _RedisBackend] = {}  # channel -> the backend it was subscribed on
        self._lock = asyncio.Lock()  # one node connection opened at a time
        self._sharded = False

    async def connect(self) -> None:
        self._sharded = await sharded_pubsub(self._cluster)

    async def disconnect(self) -> None:
        for backend in self._nodes.values():
            await backend.disconnect()
        self._nodes.clear()
        await self._cluster.aclose()

    async def publish(self, channel: str, message: Any) -> None:
        await (self._cluster.spublish if self._sharded else self._cluster.publish)(channel, message)

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        # The pipeline sends each node its messages in order, as one batch.
        command = "SPUBLISH" if self._sharded else "PUBLISH"
        async with self._cluster.pipeline(transaction=False) as pipe:
            for channel, message in messages:
                pipe.execute_command(command, channel, message)
            await pipe.execute()

    async def subscribe(self, channel: str) -> None:
        backend = self._channels.get(channel) or await self._backend_for(channel)
        self._channels[channel] = backend
        await backend.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        backend = self._channels[channel]
        if backend._refs.get(channel) == 1:
            del self._channels[channel]
        await backend.unsubscribe(channel)

    async def _backend_for(self, channel: str) -> _RedisBackend:
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(channel) if self._sharded else self._cluster.get_primaries()[0]
        if node is None:
            raise RedisConnectionError(f"no cluster node serves channel {channel!r}")
        async with self._lock:
            if node.name not in self._nodes:
                kwargs = self._cluster.nodes_manager.connection_kwargs
                client = redis.Redis(host=node.host, port=int(node.port), username=kwargs.get("username"),
                                     password=kwargs.get("password"), ssl=bool(kwargs.get("ssl")), **_CLIENT_OPTIONS)
                backend = _RedisBackend(client, sharded=self._sharded, events=self._events)
                await backend.connect()
                self._nodes[node.name] = backend
            return self._nodes[node.name]


INBOX_LIMIT = 1000  # events a subscriber may fall behind by before it is told it missed some


class _Inbox:
    """A subscriber's unread events: a list and at most one waiter, a fraction of an asyncio.Queue
    (four deques, each a block of 64 slots even when empty; held once per open subscription,
    thousands per process). One too far behind loses its backlog for a _LOST: it resumes from its
    cursor, as after a dropped connection, instead of growing."""

    __slots__ = ("_events", "_waiter")

    def __init__(self) -> None:
        self._events: list[Event | None] = []  # short: popping the front costs nothing that matters
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: Event | None) -> None:
        if len(self._events) >= INBOX_LIMIT:
            self._events.clear()
            event = _LOST
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event | None:
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.pop(0)


class _Subscriber(Subscriber):
    def __init__(self, inbox: _Inbox) -> None:
        self._inbox = inbox  # in place of upstream's asyncio.Queue

    # Its own iterator, where upstream's is an async generator: frames less per subscription.
    def __aiter__(self) -> _Subscriber:  # type: ignore[override]
        return self

    async def __anext__(self) -> Event:
        event = await self._inbox.get()
        if event is None:
            raise StopAsyncIteration
        return _checked(event)

    async def get(self) -> Event:
        event = await self._inbox.get()
        if event is None:
            raise Unsubscribed()
        return _checked(event)


def _checked(event: Event) -> Event:
    if event is _LOST:
        raise BroadcastConnectionLost("Redis connection lost; events may have been missed")
    return event


class _Subscription:
    """broadcast.subscribe(channel), as a class rather than a generator: nothing suspended to hold
    while it lasts."""

    __slots__ = ("_broadcast", "_channel", "_inbox")

    def __init__(self, broadcast: _Broadcast, channel: str) -> None:
        self._broadcast, self._channel, self._inbox = broadcast, channel, _Inbox()

    async def __aenter__(self) -> Subscriber:
        await self._broadcast.attach(self._channel, self._inbox)
        return _Subscriber(self._inbox)

    async def __aexit__(self, *exc_info: object) -> None:
        self._inbox.put_nowait(None)  # as upstream: ends any other reader of this subscriber
        await self._broadcast.detach(self._channel, self._inbox)


class _Callback:
    """Delivers to a function, on the listener's turn: no task or queue per listener. None tells
    it events may have been missed."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[[Event | None], None]) -> None:
        self._call = call

    def put_nowait(self, event: Event | None) -> None:
        if event is _LOST:
            self._call(None)
        elif event is not None:
            self._call(event)


class _Sink(Protocol):
    def put_nowait(self, event: Event | None) -> None: ...


def _deliver(sink: _Sink, event: Event) -> None:
    try:
        sink.put_nowait(event)
    except Exception:  # one listener's bug must not silence the others
        log.exception("a broadcast listener failed on %r", event.channel)


class _Broadcast(Broadcast):
    _subscribers: dict[str, set[_Sink]]  # type: ignore[assignment]

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        if isinstance(self._backend, _RedisBackend | _ClusterBackend):
            await self._backend.publish_many(messages)
            return
        for channel, message in messages:
            await self._backend.publish(channel, message)

    async def _listener(self) -> None:
        while True:
            try:
                event = await self._backend.next_published()
            except BroadcastConnectionLost:
                # Any subscriber may have missed events, whatever its channel. Those that stay
                # subscribed get events again once the backend has reconnected.
                for sinks in list(self._subscribers.values()):
                    for sink in list(sinks):
                        _deliver(sink, _LOST)
                continue
            for sink in list(self._subscribers.get(event.channel, ())):
                _deliver(sink, event)

    # Upstream registers the queue only after awaiting the backend, so two concurrent first
    # subscribers overwrite each other; here the backend counts and the bookkeeping never awaits.
    async def attach(self, channel: str, sink: _Sink) -> None:
        await self._backend.subscribe(channel)
        self._subscribers.setdefault(channel, set()).add(sink)

    async def detach(self, channel: str, sink: _Sink) -> None:
        sinks = self._subscribers[channel]
        sinks.discard(sink)
        if not sinks:
            del self._subscribers[channel]
        await self._backend.unsubscribe(channel)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[Subscriber]:  # type: ignore[override]
        return _Subscription(self, channel)


async def listen(broadcast: Broadcast, channel: str, call: Callable[[Event | None], None]
                 ) -> Callable[[], Awaitable[None]]:
    """Calls call(event) for each event on channel as the listener receives it, call(None) when
    events may have been missed; returns what stops it. For what thousands listen to at once."""
    assert isinstance(broadcast, _Broadcast), "listening needs make_broadcast's broadcast"
    sink = _Callback(call)
    await broadcast.attach(channel, sink)
    return partial(broadcast.detach, channel, sink)


def make_broadcast(redis_url: str) -> Broadcast:
    if is_cluster_url(redis_url):
        return _Broadcast(backend=_ClusterBackend(redis_url))
    return _Broadcast(backend=_RedisBackend(single_node(redis_url, **_CLIENT_OPTIONS)))
