"""Acceptance: S3 unreachable for 60 seconds while messages keep coming. Nothing is lost, the backlog
drains once S3 is back, and meanwhile the aggregator's memory and local log stay bounded: past
ARCHIVE_WAL_MAX_MB of records waiting for the archive it stops taking entries, which wait in the chat
stream (Redis) instead.

The archive-writer process reaches S3 through a relay this test shuts; the aggregator and writer are
real worker processes. The default run shortens the outage to 15 seconds (at a higher rate, so the
log still reaches its cap); ARCHIVE_OUTAGE_FULL=1 runs the full 60."""
import asyncio
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psutil
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
from tests.archiving import Stage, TcpGate, WorkerProcess, archive_s3, archived_messages, until

FULL = os.environ.get("ARCHIVE_OUTAGE_FULL") == "1"
OUTAGE_S = 60.0 if FULL else 15.0
BEFORE_S = AFTER_S = 10.0 if FULL else 5.0
RATE = 300 if FULL else 600  # messages per second, steady
CHATS = 200
PARTITIONS = 4
WAL_MAX_MB = 1
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


class Everyone:
    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        return Membership(chat_id, user_id, uuid.UUID(int=1), False)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(settings.redis_url)
    yield client
    await client.aclose()


async def aggregator_lag(stage: Stage) -> int:
    lag = 0
    for partition in range(PARTITIONS):
        for group in await stage.redis.xinfo_groups(stage.chats.key(partition)):
            if group["name"] == b"chat-aggregator":
                lag += int(group.get("lag") or 0)
    return lag


def wal_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.wal") if p.exists())


@pytest.mark.timeout(600 if FULL else 300)
async def test_an_s3_outage_loses_nothing_and_stays_bounded(
        runtime: Runtime, settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> None:
    assert runtime.pool is not None
    stage = Stage(settings, runtime.pool, redis, f"{settings.redis_prefix}outage{secrets.token_hex(3)}:",
                  PARTITIONS, archive_s3(settings))
    await stage.prepare()
    s3 = urlsplit(settings.s3_endpoint_url)
    gate = TcpGate(s3.hostname or "127.0.0.1", s3.port or 80)
    await gate.open()
    wal = tmp_path / "wal"
    env = {"REDIS_PREFIX": stage.prefix, "CHAT_PARTITIONS": str(PARTITIONS), "ARCHIVE_WINDOW_SECONDS": "2",
           "STREAM_LEASE_SECONDS": "3", "ARCHIVE_WAL_DIR": str(wal), "ARCHIVE_WAL_MAX_MB": str(WAL_MAX_MB)}
    aggregator = WorkerProcess(settings, "chat-aggregator", tmp_path / "aggregator.log", **env)
    writer = WorkerProcess(settings, "archive-writer", tmp_path / "writer.log",
                           **{**env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"})
    chats = [uuid.uuid4() for _ in range(CHATS)]
    sent: dict[uuid.UUID, list[Message]] = {c: [] for c in chats}
    stop = asyncio.Event()

    async with make_broadcast(settings.redis_url) as broadcast:
        deps = ChatDeps(Everyone(), PgSequences(stage.pool), RedisChatLog(redis, stage.chats),
                        RedisChatBus(broadcast, stage.prefix))

        async def load() -> None:
            who, n, started = uuid.uuid4(), 0, time.monotonic()
            while not stop.is_set():
                chat_id = chats[n % CHATS]
                sent[chat_id].append(await chat.send(deps, who, str(chat_id), f"m{n}", f"#{n}", NOW))
                n += 1
                ahead = n / RATE - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

        await aggregator.start()
        await writer.start()
        sending = asyncio.create_task(load())
        try:
            await asyncio.sleep(BEFORE_S)
            assert aggregator.proc is not None
            process = psutil.Process(aggregator.proc.pid)
            rss_before = process.memory_info().rss
            await gate.shut()
            positions_at_cut = await stage.index.positions()
            peak_wal = peak_rss = 0
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < OUTAGE_S:
                peak_wal = max(peak_wal, wal_bytes(wal))
                peak_rss = max(peak_rss, process.memory_info().rss)
                await asyncio.sleep(0.5)
            stalled = await stage.index.positions()
            waiting = await aggregator_lag(stage)  # entries left in the stream, not taken while the log was full
            await gate.open()
            back_at = time.monotonic()
            await asyncio.sleep(AFTER_S)
            stop.set()
            await sending
            await until(stage.archived_all, "the backlog to drain", timeout=120)
            drained_s = time.monotonic() - back_at
        except BaseException:
            print("aggregator:", aggregator.log_tail(), "\nwriter:", writer.log_tail())
            raise
        finally:
            stop.set()
            sending.cancel()
            await aggregator.stop()
            await writer.stop()
            await gate.shut()

    total = sum(len(v) for v in sent.values())
    print(f"{total} messages; during {OUTAGE_S:.0f} s without S3 the local log peaked at {peak_wal} bytes"
          f" (cap {WAL_MAX_MB} MiB) and the aggregator's RSS at {peak_rss >> 20} MiB ({rss_before >> 20} MiB"
          f" before); {waiting} entries waited in the stream at the end; drained {drained_s:.1f} s after S3"
          " came back")
    # S3 really was away: nothing could be archived past what was committed as it went.
    assert all(stalled[p].last_entry == positions_at_cut[p].last_entry for p in positions_at_cut)
    assert total > RATE * OUTAGE_S  # the load kept coming all along
    # Bounded: the cap, plus at most one batch per partition appended before the check stops it.
    assert peak_wal <= (WAL_MAX_MB << 20) + (1 << 20)
    assert peak_wal >= WAL_MAX_MB << 20 and waiting > 0  # the cap was reached and held the rest back
    assert peak_rss - rss_before <= 64 << 20
    archived = await archived_messages(stage, chats)
    for chat_id in chats:
        assert archived[chat_id] == sorted(sent[chat_id], key=lambda m: m.seq)
        assert [m.seq for m in archived[chat_id]] == list(range(1, len(sent[chat_id]) + 1))
