"""The chat archive against the real Redis, PostgreSQL and S3: windows become one object per
partition, history pages through recent store and archive, and a lost local log is rebuilt from the
stream."""
import asyncio
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from domain import archive, chat
from domain.archive import GETS_PER_PAGE
from domain.chat import ChatDeps, Membership, Message
from infra.app import Runtime
from infra.archive import PREFIX, S3ChatArchive, S3Objects
from infra.broadcast import make_broadcast
from infra.chat_log import CHAT_AGGREGATOR, CHAT_PUSHER, RedisChatBus, RedisChatLog
from infra.pg_chats import PgSequences
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import trim
from infra.wal import WriteAheadLog
from tests.archiving import Stage, archive_s3, until
from workers.aggregator import Aggregator, pos

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
PARTITIONS = 4
RECENT = 5  # the recent store keeps this few, so history has to come from the archive


class Everyone:
    def __init__(self) -> None:
        self.other = uuid.uuid4()

    async def member(self, user_id: uuid.UUID, chat_id: uuid.UUID) -> Membership | None:
        return Membership(chat_id, user_id, self.other, False)


class CountingObjects(S3Objects):
    def __init__(self, client: object, bucket: str) -> None:
        super().__init__(client, bucket)
        self.reads = 0

    async def read(self, key: str, offset: int, length: int) -> bytes:
        self.reads += 1
        return await super().read(key, offset, length)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def stage(runtime: Runtime, redis: aioredis.Redis, settings: Settings) -> Stage:
    assert runtime.pool is not None
    found = Stage(settings, runtime.pool, redis, f"{settings.redis_prefix}{secrets.token_hex(3)}:", PARTITIONS,
                  archive_s3(settings))
    await found.prepare()
    return found


@pytest.fixture
async def deps(stage: Stage, settings: Settings) -> AsyncIterator[ChatDeps]:
    async with make_broadcast(settings.redis_url) as broadcast:
        yield ChatDeps(Everyone(), PgSequences(stage.pool), RedisChatLog(stage.redis, stage.chats, recent=RECENT),
                       RedisChatBus(broadcast, stage.prefix))


async def send_many(deps: ChatDeps, chats: list[uuid.UUID], per_chat: int, spread_s: float
                    ) -> dict[uuid.UUID, list[Message]]:
    sender = uuid.uuid4()
    sent: dict[uuid.UUID, list[Message]] = {c: [] for c in chats}
    for i in range(per_chat):
        for chat_id in chats:
            sent[chat_id].append(await chat.send(deps, sender, str(chat_id), f"m{i}", f"text {i} of {chat_id}", NOW))
        await asyncio.sleep(spread_s / per_chat)
    return sent


async def objects_under(stage: Stage, prefix: str) -> list[str]:
    found = await asyncio.to_thread(stage.s3.list_objects_v2, Bucket=stage.settings.s3_bucket, Prefix=prefix)
    return [item["Key"] for item in found.get("Contents", [])]


async def test_windows_become_one_object_per_partition_and_history_reads_back_to_one(
        stage: Stage, deps: ChatDeps, tmp_path: Path) -> None:
    chats = [uuid.uuid4() for _ in range(12)]
    started = time.time()
    async with stage.writing(), stage.aggregating(tmp_path / "wal", window_ms=1000):
        sent = await send_many(deps, chats, 30, spread_s=2.5)
        await until(stage.archived_all, "the archive to reach the end of every partition")
        await asyncio.sleep(1.5)  # past a window: the log rolls over and truncates what is archived
    spanned = int(time.time() - started) + 2
    # The bucket is the whole test run's: only windows that began with this test are its own.
    keys = [k for k in await objects_under(stage, f"{PREFIX}/")
            if int(k.split("/")[2].split("-")[0]) >= int(started * 1000) - 1000]
    assert keys
    # One object per partition per window at most, whatever the number of chats.
    per_partition: dict[str, int] = {}
    for key in keys:
        per_partition[key.split("/")[1]] = per_partition.get(key.split("/")[1], 0) + 1
    assert all(count <= spanned for count in per_partition.values()), per_partition
    for chat_id in chats:
        assert await stage.whole_history(chat_id, page=7) == sent[chat_id]
    # What the archive holds leaves the local log, and the stream once the pusher is done with it too.
    assert WriteAheadLog(tmp_path / "wal").open() == []
    # Twelve random chats may leave one of the partitions empty.
    for partition in sorted({stage.chats.partition_of(str(c)) for c in chats}):
        key = stage.chats.key(partition)
        assert await stage.redis.xlen(key) > 0
        await stage.redis.xgroup_setid(key, CHAT_PUSHER, "$")
        await trim(stage.redis, stage.chats, partition)
        assert await stage.redis.xlen(key) == 0


async def test_history_merges_recent_store_and_archive_without_gap_or_duplicate(
        stage: Stage, deps: ChatDeps, tmp_path: Path) -> None:
    chat_id = uuid.uuid4()
    async with stage.writing(), stage.aggregating(tmp_path / "wal", window_ms=500):
        sent = (await send_many(deps, [chat_id], 40, spread_s=2.0))[chat_id]
        await until(stage.archived_all, "the archive to catch up")
    objects = CountingObjects(stage.s3, stage.settings.s3_bucket)
    reader = archive.history
    store = S3ChatArchive(stage.index, objects, stage.keys.sealer)
    user = uuid.uuid4()
    # Backwards from the newest, as a chat opens and scrolls up.
    seen: list[Message] = []
    before: int | None = None
    while True:
        objects.reads = 0
        _, page, more = await reader(deps, store, user, str(chat_id), None, before, 6, True)
        assert objects.reads <= GETS_PER_PAGE
        assert page, "a page that says there is more must not be empty"
        seen = page + seen
        if not more:
            break
        before = page[0].seq
    assert [m.seq for m in seen] == list(range(1, 41))
    assert seen == sent
    # Forwards from the start, across the seam into the recent store.
    seen, after = [], None
    while True:
        objects.reads = 0
        _, page, more = await reader(deps, store, user, str(chat_id), after, None, 9, False)
        assert objects.reads <= GETS_PER_PAGE
        seen += page
        if not more:
            break
        after = page[-1].seq
    assert seen == sent


async def test_a_lost_log_is_rebuilt_from_the_stream(stage: Stage, deps: ChatDeps, tmp_path: Path) -> None:
    chats = [uuid.uuid4() for _ in range(6)]
    window_ms = 60_000
    frozen = time.time()
    wal = tmp_path / "wal"
    # A first aggregator takes (and acknowledges) everything, but no window closes: its clock stands still.
    async with stage.aggregating(wal, window_ms, clock=lambda: frozen, name="first"):
        sent = await send_many(deps, chats, 20, spread_s=0.5)

        async def acknowledged() -> bool:
            groups = [await stage.redis.xinfo_groups(stage.chats.key(p)) for p in range(PARTITIONS)]
            return all(int(g["pending"]) == 0 and g.get("lag") in (0, None) for gs in groups for g in gs
                       if g["name"] == b"chat-aggregator")

        await until(acknowledged, "the first aggregator to acknowledge everything")
    shutil.rmtree(wal)  # the machine is gone with its disk
    later = frozen + 3 * window_ms / 1000
    async with stage.writing(), stage.aggregating(tmp_path / "other", window_ms, clock=lambda: later, name="next"):
        await until(stage.archived_all, "the next owner to archive from the stream")
    for chat_id in chats:
        assert await stage.whole_history(chat_id) == sent[chat_id]


async def test_erasure_destroys_the_chat_key_and_a_report_holds_it_for_moderation(
        stage: Stage, deps: ChatDeps, tmp_path: Path) -> None:
    ended, reported, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pairs = {chat_id: (uuid.uuid4(), uuid.uuid4()) for chat_id in (ended, reported, late)}
    await stage.pool.executemany(
        "INSERT INTO user_matches (user_id, match_id, other_id, created_at) VALUES ($1, $2, $3, $4)",
        [row for chat_id, (a, b) in pairs.items() for row in ((a, chat_id, b, NOW), (b, chat_id, a, NOW))])
    reporter, target = pairs[reported]
    await stage.pool.execute("INSERT INTO reports (reporter_id, id, target_id, reason, details, created_at)"
                             " VALUES ($1, $2, $3, 'SPAM', '', $4)", reporter, uuid.uuid4(), target, NOW)
    async with stage.writing(), stage.aggregating(tmp_path / "wal", window_ms=500):
        sent = await send_many(deps, [ended, reported], 12, spread_s=1.0)
        await until(stage.archived_all, "the archive to catch up")
    objects_before = await objects_under(stage, f"{PREFIX}/")
    keys, hold = stage.keys, timedelta(days=30)
    assert await stage.whole_history(ended) == sent[ended]

    assert await keys.chat_ended(ended, NOW, hold) == NOW
    assert await stage.archive.page(ended, None, None, 50, True) == ([], False)
    assert (await keys.data_keys([ended]))[ended] is None  # never a new key: a replayed window stays unreadable
    # The objects themselves are untouched (they hold other chats too); only the key is gone.
    assert await objects_under(stage, f"{PREFIX}/") == objects_before

    assert await keys.chat_ended(reported, NOW, hold) == NOW + hold
    assert await keys.erase_due(NOW + hold - timedelta(seconds=1)) == 0
    assert await stage.whole_history(reported) == sent[reported]  # moderation still reads it
    assert await keys.erase_due(NOW + hold) == 1
    assert await stage.whole_history(reported) == []

    # Erased while its window is still open: the window closes without it.
    frozen = time.time()
    async with stage.aggregating(tmp_path / "wal2", 60_000, clock=lambda: frozen, name="open"):
        await send_many(deps, [late], 5, spread_s=0.2)
        await until(lambda: _pending_none(stage), "the aggregator to take the messages")
        await keys.chat_ended(late, NOW, hold)
    later = frozen + 180
    async with stage.writing(), stage.aggregating(tmp_path / "wal2", 60_000, clock=lambda: later, name="closes"):
        await until(stage.archived_all, "the window to be archived")
    assert await stage.pool.fetchval("SELECT count(*) FROM chat_archive_segments WHERE chat_id = $1", late) == 0


async def test_a_match_ended_without_its_erasure_scheduled_is_caught_by_the_backstop(stage: Stage) -> None:
    missed, held = uuid.uuid4(), uuid.uuid4()
    pairs = {chat_id: (uuid.uuid4(), uuid.uuid4()) for chat_id in (missed, held)}
    await stage.pool.executemany(
        "INSERT INTO user_matches (user_id, match_id, other_id, created_at, ended_at) VALUES ($1, $2, $3, $4, $4)",
        [row for chat_id, (a, b) in pairs.items() for row in ((a, chat_id, b, NOW), (b, chat_id, a, NOW))])
    reporter, target = pairs[held]
    await stage.pool.execute("INSERT INTO reports (reporter_id, id, target_id, reason, details, created_at)"
                             " VALUES ($1, $2, $3, 'SPAM', '', $4)", reporter, uuid.uuid4(), target, NOW)
    keys, hold = stage.keys, timedelta(days=7)
    assert None not in (await keys.data_keys([missed, held])).values()  # archived while the match lasted
    assert await keys.schedule_missed(hold) >= 2
    assert await keys.erase_due(NOW) >= 1
    found = await keys.data_keys([missed, held])
    assert found[missed] is None and found[held] is not None
    await keys.erase_due(NOW + hold)
    assert (await keys.data_keys([held]))[held] is None


async def _pending_none(stage: Stage) -> bool:
    for partition in range(PARTITIONS):
        for group in await stage.redis.xinfo_groups(stage.chats.key(partition)):
            if group["name"] == b"chat-aggregator" and (int(group["pending"]) or group.get("lag") not in (0, None)):
                return False
    return True


@pytest.mark.parametrize("acked_by_the_last_owner", [[], [2]])
async def test_a_taken_partition_holds_every_entry_around_the_batch_it_is_handed_first(
        stage: Stage, tmp_path: Path, acked_by_the_last_owner: list[int]) -> None:
    key = stage.chats.key(0)
    ids = [_text(await stage.redis.xadd(key, {"m": f"m{n}"})) for n in range(6)]
    await stage.redis.xreadgroup(CHAT_AGGREGATOR, "last-owner", {key: ">"})
    for n in acked_by_the_last_owner:  # applied by the last owner (in its own log), so never handed on again
        await stage.redis.xack(key, CHAT_AGGREGATOR, ids[n])
    wal = WriteAheadLog(tmp_path)
    wal.open()
    aggregator = Aggregator(stage.redis, stage.chats, stage.windows, wal, stage.index, stage.keys,
                            window_ms=600_000, wal_max_bytes=1 << 30)
    await aggregator(0, 1, [(i, f"m{n}".encode()) for n, i in enumerate(ids) if n not in acked_by_the_last_owner])
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert [(r.position, r.payload) for r in again.open()] == [(pos(i), f"m{n}".encode()) for n, i in enumerate(ids)]
    again.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
