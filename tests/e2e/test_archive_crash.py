"""Acceptance: 100,000 messages across 1,000 chats while the chat-aggregator and the archive-writer
processes are killed by SIGKILL at random moments and started again, once with the aggregator's local
log deleted first (the machine lost with its disk). Afterwards the archive holds every chat's
messages exactly, and every chat's history read through the `messages` field of a real API process
(keeping only the newest 5 in the recent store) is seq 1..n, what was sent, no gap, no duplicate.

Messages go in through the chat log's append (what sendMessage answers "accepted" on), on a stream
prefix of this test's own. The full size takes about two minutes on two cores: the default run is
smaller, ARCHIVE_CRASH_FULL=1 runs the full one."""
import asyncio
import os
import random
import secrets
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from domain import chat
from domain.chat import ChatDeps, Membership, Message
from infra.app import Runtime
from infra.broadcast import make_broadcast
from infra.chat_log import RedisChatBus, RedisChatLog
from infra.pg_chats import PgSequences
from infra.redis_client import open_redis
from infra.settings import Settings
from tests.archiving import Stage, WorkerProcess, archive_s3, archived_messages, until
from tests.e2e.conftest import Account, running_server, sign_up

FULL = os.environ.get("ARCHIVE_CRASH_FULL") == "1"
CHATS = 1000 if FULL else 200
PER_CHAT = 100 if FULL else 40
RECENT = 5
PAGE = 50
READERS = 8
SENDERS = 64  # concurrent sends, as many API requests at once
PARTITIONS = 8
# A page of history reads at most two windows' segments of a chat: windows short against the load
# would make the final read-back through the API tens of thousands of requests.
WINDOW_SECONDS = "10" if FULL else "2"
MIN_KILLS = 3  # of each process
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
MESSAGES = """query($chat: ID!, $last: Int, $before: String) { messages(chatId: $chat, last: $last, before: $before) {
  edges { node { seq text } } pageInfo { hasPreviousPage startCursor } } }"""


class Everyone:
    """Anyone is in every chat: membership is not what is tested here."""

    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        return Membership(chat_id, user_id, uuid.UUID(int=1), False)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def prefix(settings: Settings) -> str:
    return f"{settings.redis_prefix}crash{secrets.token_hex(3)}:"


@pytest.fixture(scope="module")
def api(settings: Settings, migrated: None, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"REDIS_PREFIX": prefix, "CHAT_PARTITIONS": str(PARTITIONS), "CHAT_RECENT_MESSAGES": str(RECENT),
           "RATE_LIMIT_SCALE": "0", "ACCESS_TOKEN_TTL_SECONDS": "7200"}
    with running_server(settings, tmp_path_factory.mktemp("crash-api"), **env) as base:
        yield base


async def history_through_api(client: httpx.AsyncClient, reader: Account, chat_id: uuid.UUID, took: list[float]
                              ) -> list[tuple[int, str]]:
    """A chat as its member pages it back from the newest through `messages`."""
    seen: list[tuple[int, str]] = []
    before: str | None = None
    while True:
        asked = time.monotonic()
        response = await client.post("/graphql", headers={"authorization": f"Bearer {reader.access_token}"}, json={
            "query": MESSAGES, "variables": {"chat": str(chat_id), "last": PAGE, "before": before}})
        took.append(time.monotonic() - asked)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        found = body["data"]["messages"]
        seen = [(e["node"]["seq"], e["node"]["text"]) for e in found["edges"]] + seen
        if not found["pageInfo"]["hasPreviousPage"]:
            return seen
        before = found["pageInfo"]["startCursor"]


@pytest.mark.timeout(1200 if FULL else 300)
async def test_killed_aggregators_and_writers_and_a_lost_log_lose_and_double_nothing(
        runtime: Runtime, settings: Settings, redis: aioredis.Redis, tmp_path: Path, api: str, prefix: str) -> None:
    assert runtime.pool is not None
    stage = Stage(settings, runtime.pool, redis, prefix, PARTITIONS, archive_s3(settings))
    await stage.prepare()
    wal = tmp_path / "wal"
    env = {"REDIS_PREFIX": stage.prefix, "CHAT_PARTITIONS": str(PARTITIONS), "ARCHIVE_WINDOW_SECONDS": WINDOW_SECONDS,
           "STREAM_LEASE_SECONDS": "1.5", "ARCHIVE_WAL_DIR": str(wal)}
    aggregator = WorkerProcess(settings, "chat-aggregator", tmp_path / "aggregator.log", **env)
    writer = WorkerProcess(settings, "archive-writer", tmp_path / "writer.log", **env)
    rng = random.Random(secrets.randbits(32))
    chats = [uuid.uuid4() for _ in range(CHATS)]
    # One reader who is in every chat (each a match of theirs), to read them all through the API.
    reader = await sign_up(api)
    await stage.pool.executemany(
        "INSERT INTO user_matches (user_id, match_id, other_id, created_at) VALUES ($1, $2, $3, $4)",
        [(uuid.UUID(reader.id), chat_id, uuid.uuid4(), NOW) for chat_id in chats])
    sent: dict[uuid.UUID, list[Message]] = {c: [] for c in chats}
    lost_log = False

    async with make_broadcast(settings.redis_url) as broadcast:
        deps = ChatDeps(Everyone(), PgSequences(stage.pool), RedisChatLog(redis, stage.chats, recent=RECENT),
                        RedisChatBus(broadcast, stage.prefix))
        work = [(c, i) for i in range(PER_CHAT) for c in chats]
        queue: asyncio.Queue[tuple[uuid.UUID, int]] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)

        async def sender() -> None:
            who = uuid.uuid4()
            while not queue.empty():
                chat_id, i = queue.get_nowait()
                sent[chat_id].append(await chat.send(deps, who, str(chat_id), f"m{i}", f"#{i} {chat_id}", NOW))

        started = time.monotonic()
        await aggregator.start()
        await writer.start()
        load = asyncio.gather(*(sender() for _ in range(SENDERS)))
        try:
            while not load.done() or min(aggregator.kills, writer.kills) < MIN_KILLS or not lost_log:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                victim = rng.choice([aggregator, writer])
                await victim.kill()
                if victim is aggregator and aggregator.kills >= 2 and not lost_log:
                    shutil.rmtree(wal, ignore_errors=True)
                    lost_log = True
                await asyncio.sleep(rng.uniform(0, 0.5))
                await victim.start()
            await load
            loaded_s = time.monotonic() - started

            await until(stage.archived_all, "the archive to hold every partition's last entry", timeout=180)
            archived_s = time.monotonic() - started
        except BaseException:
            print("aggregator:", aggregator.log_tail(), "\nwriter:", writer.log_tail())
            raise
        finally:
            load.cancel()
            await aggregator.stop()
            await writer.stop()

    assert sum(len(v) for v in sent.values()) == CHATS * PER_CHAT
    archived = await archived_messages(stage, chats)
    for chat_id in chats:
        expected = sorted(sent[chat_id], key=lambda m: m.seq)
        assert [m.seq for m in expected] == list(range(1, PER_CHAT + 1))
        assert archived[chat_id] == expected, f"chat {chat_id}: {[m.seq for m in archived[chat_id]][:20]}..."
    # And as the reader pages every chat through the API: archive and recent store, seams included.
    read_started = time.monotonic()
    todo, took = list(chats), list[float]()

    async def read(client: httpx.AsyncClient) -> None:
        while todo:
            chat_id = todo.pop()
            expected = [(m.seq, m.text) for m in sorted(sent[chat_id], key=lambda m: m.seq)]
            assert await history_through_api(client, reader, chat_id, took) == expected, f"chat {chat_id} via the API"

    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        await asyncio.gather(*(read(client) for _ in range(READERS)))
    print(f"{CHATS * PER_CHAT} messages sent in {loaded_s:.0f} s, all archived at {archived_s:.0f} s; killed the"
          f" aggregator {aggregator.kills} times (its log deleted once), the writer {writer.kills} times; every chat"
          f" read back through `messages` in {time.monotonic() - read_started:.0f} s ({len(took)} pages, p50"
          f" {statistics.median(took) * 1000:.0f} ms)")
