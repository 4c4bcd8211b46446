"""Sockets that vanish without a goodbye leave nothing behind, in the API process or in Redis.

Half the clients reset their TCP connection; half go silent, as a phone that lost its network: no
FIN, no close frame, no more pongs. The server hears the first at once and must find the second by
its pings. Both subprotocols, subscribed clients, and counts read from /metrics and Redis only.
"""
import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from domain.ids import new_id
from domain.model import Principal
from infra.db import open_pool
from infra.security import JwtSigner
from infra.settings import Settings
from tests.e2e.conftest import running_server
from tests.e2e.raw_ws import LEGACY_WS, TRANSPORT_WS, RawSocket, connect
from tests.factories import make_users

CLIENTS = 200
INIT_BATCH = 50  # connection_inits in flight at once: a connection storm is not what this test is about
PING_SECONDS = PING_TIMEOUT_SECONDS = 1.0
# A silent peer is dropped within a ping interval plus its timeout; the rest is unwinding, on a
# loaded machine.
SETTLE_LIMIT = 4 * (PING_SECONDS + PING_TIMEOUT_SECONDS) + 5
MY_EVENTS = "subscription { myEvents { __typename ... on ProfileChanged { me { id bio } } } }"
CHAT_EVENTS = "subscription($c: ID!) { chatEvents(chatId: $c) { __typename } }"
UPDATE = "mutation($i: ProfileInput!) { updateProfile(input: $i) { __typename } }"


@dataclass(frozen=True)
class Footprint:
    subscriptions: float
    websockets: float
    tasks: float
    channels: frozenset[bytes]  # Redis channels under this run's prefix with a subscriber
    subscribers: int  # PUBSUB NUMSUB, summed over the clients' own channels


@dataclass(frozen=True)
class Client:
    user_id: uuid.UUID
    token: str


@pytest.fixture(scope="module")
def pinging_api(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(settings, tmp_path_factory.mktemp("dropped"), WS_PING_SECONDS=str(PING_SECONDS),
                        WS_PING_TIMEOUT_SECONDS=str(PING_TIMEOUT_SECONDS)) as base:
        yield base


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def make_clients(settings: Settings, count: int) -> list[Client]:
    """Accounts with a live session each, in bulk: signing in is not what this test is about."""
    signer = JwtSigner(settings.secret_key, 3600)
    now = datetime.now(UTC)
    expires = now + timedelta(days=1)
    async with open_pool(settings.database_url) as pool:
        sessions = [(user_id, new_id()) for user_id, _ in await make_users(pool, count)]
        await pool.copy_records_to_table(
            "sessions", columns=["user_id", "id", "refresh_hash", "created_at", "refreshed_at", "expires_at"],
            records=[(u, s, secrets.token_bytes(32), now, now, expires) for u, s in sessions],
        )
    return [Client(u, signer.issue(Principal(u, s, expires), now)[0]) for u, s in sessions]


async def make_chats(settings: Settings, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[uuid.UUID]:
    """A live match, and so a chat, for each pair, as the swipe writer would have left it."""
    now = datetime.now(UTC)
    ids = [new_id() for _ in pairs]
    async with open_pool(settings.database_url) as pool:
        await pool.copy_records_to_table(
            "matches", columns=["low_id", "high_id", "id", "created_at", "notified", "low_completed"],
            records=[(min(a, b), max(a, b), m, now, True, True) for (a, b), m in zip(pairs, ids, strict=True)],
        )
        await pool.copy_records_to_table(
            "user_matches", columns=["user_id", "match_id", "other_id", "created_at"],
            records=[row for (a, b), m in zip(pairs, ids, strict=True) for row in ((a, m, b, now), (b, m, a, now))],
        )
    return ids


async def read_metrics(base: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{base}/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            values[name] = float(value)
    return values


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def footprint(base: str, redis: aioredis.Redis, prefix: str, channels: list[bytes]) -> Footprint:
    metrics = await read_metrics(base)
    numsub = await redis.pubsub_numsub(*channels) if channels else []
    return Footprint(
        subscriptions=metrics["graphql_subscriptions"], websockets=metrics["websocket_connections"],
        tasks=metrics["asyncio_tasks"],
        channels=frozenset(_bytes(c) for c in await redis.pubsub_channels(f"{prefix}*")),
        subscribers=sum(count for _, count in numsub),
    )


async def settled(base: str, redis: aioredis.Redis, prefix: str, channels: list[bytes]) -> Footprint:
    # Sockets of other tests may still be unwinding: a baseline is what stays put for a second.
    last = await footprint(base, redis, prefix, channels)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        again = await footprint(base, redis, prefix, channels)
        if again == last:
            break
        last = again
    return last


async def update_until_heard(base: str, clients: dict[RawSocket, Client], seconds: float = 20) -> None:
    """Changes each client's profile until its subscription delivers it.

    A subscription says nothing when it starts listening, so one change may come too early; trying
    again beats guessing a sleep.
    """
    waiting = dict(clients)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while waiting:
            assert time.monotonic() < deadline, f"{len(waiting)} subscribers heard nothing"
            bio = f"bio {uuid.uuid4().hex[:8]}"
            answers = await asyncio.gather(*(
                http.post("/graphql", json={"query": UPDATE, "variables": {"i": {"bio": bio}}},
                          headers={"authorization": f"Bearer {client.token}"})
                for client in waiting.values()))
            assert all(a.status_code == 200 and a.json()["data"]["updateProfile"]["__typename"] == "Me"
                       for a in answers), answers[0].text
            await asyncio.sleep(0.5)
            for socket in list(waiting):
                assert socket.messages is not None
                while not socket.messages.empty():
                    message = socket.messages.get_nowait()
                    assert message.get("type") in ("next", "data", "ka"), message
                    if message.get("type") in ("next", "data"):
                        assert message["payload"]["data"]["myEvents"]["me"]["bio"].startswith("bio "), message
                        waiting.pop(socket, None)


async def test_dropped_sockets_leave_nothing_behind(pinging_api: str, settings: Settings,
                                                   redis_client: aioredis.Redis) -> None:
    clients = await make_clients(settings, CLIENTS)
    # Clients 2k and 2k+1 share chat k; every protocol, drop and subscription mix occurs.
    chats = await make_chats(settings, [(a.user_id, b.user_id) for a, b in zip(clients[0::2], clients[1::2],
                                                                               strict=True)])
    in_chat = {index for index in range(CLIENTS) if (index // 4) % 2}
    url = urlsplit(pinging_api)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    prefix = settings.redis_prefix
    before = await settled(pinging_api, redis_client, prefix, [])

    sockets: dict[RawSocket, Client] = {}
    try:
        for index, client in enumerate(clients):
            socket = await connect(host, port, TRANSPORT_WS if index % 2 else LEGACY_WS)
            sockets[socket] = client
        pending = list(sockets.items())
        for start in range(0, len(pending), INIT_BATCH):
            await asyncio.gather(*(socket.init(client.token) for socket, client in pending[start:start + INIT_BATCH]))
        for index, socket in enumerate(sockets):
            if index in in_chat:
                socket.subscribe("1", CHAT_EVENTS, {"c": str(chats[index // 2])})
            else:
                socket.subscribe("1", MY_EVENTS)
        await update_until_heard(pinging_api, {s: c for i, (s, c) in enumerate(sockets.items()) if i not in in_chat})

        # Every socket listens on its user's channel (the session watcher) and chat subscribers also
        # on their chat's; none of that says when it is done, so wait for it.
        wanted = CLIENTS + len(in_chat) // 2
        deadline = time.monotonic() + 20
        while True:
            during = await footprint(pinging_api, redis_client, prefix, [])
            ours = sorted(during.channels - before.channels)
            if len(ours) == wanted and during.subscriptions == before.subscriptions + CLIENTS:
                break
            assert time.monotonic() < deadline, f"{len(ours)} channels of {wanted}; {during.subscriptions} live"
            await asyncio.sleep(0.2)
        assert during.websockets == before.websockets + CLIENTS, during
        assert during.tasks > before.tasks, "subscriptions run in tasks"
        assert (await footprint(pinging_api, redis_client, prefix, ours)).subscribers >= CLIENTS

        # Each kind of drop on both subprotocols: protocols alternate by index, drops by pairs.
        dropped_at = time.monotonic()
        silent = [socket for index, socket in enumerate(sockets) if index % 4 >= 2]
        for index, socket in enumerate(sockets):
            if index % 4 < 2:
                socket.reset()
            else:
                socket.go_silent()
        # Events for the silent ones: the server now has something to write to peers that read nothing.
        async with httpx.AsyncClient(base_url=pinging_api, timeout=30) as http:
            await asyncio.gather(*(
                http.post("/graphql", json={"query": UPDATE, "variables": {"i": {"bio": "unheard"}}},
                          headers={"authorization": f"Bearer {sockets[socket].token}"})
                for socket in silent))

        expected = (before.subscriptions, before.websockets, before.tasks, before.channels, 0)
        while True:
            now = await footprint(pinging_api, redis_client, prefix, ours)
            if (now.subscriptions, now.websockets, now.tasks, now.channels, now.subscribers) == expected:
                break
            assert time.monotonic() - dropped_at < SETTLE_LIMIT, (
                f"{SETTLE_LIMIT:.0f} s after the drops: {now.subscriptions:.0f} subscriptions,"
                f" {now.websockets:.0f} sockets, {now.tasks:.0f} tasks, {len(now.channels)} channels,"
                f" {now.subscribers} subscribers of ours; baseline {before.subscriptions:.0f},"
                f" {before.websockets:.0f}, {before.tasks:.0f}, {len(before.channels)}, 0")
            await asyncio.sleep(0.25)
    finally:
        for socket in sockets:
            socket.abort()
