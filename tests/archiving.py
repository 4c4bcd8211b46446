"""The aggregator and the archive writer running inside a test (or a benchmark) on a stream prefix of
its own, against the real Redis, PostgreSQL and S3."""
import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from domain.archive import Segment
from domain.chat import Message
from infra.archive import ARCHIVE_WRITER, S3ChatArchive, S3Objects, decode_window, read_segment, windows_spec
from infra.archive_keys import PgArchiveKeys, Sealer
from infra.chat_log import CHAT_AGGREGATOR, chats_spec
from infra.pg_archive import PgArchiveIndex
from infra.pg_fences import PgFences
from infra.photo_store import s3_client
from infra.settings import Settings
from infra.streams import PartitionedConsumer, StreamSpec, ensure_groups
from infra.wal import WriteAheadLog
from tests.conftest import settings_env
from workers.aggregator import Aggregator, decode_entry, pos
from workers.archive_writer import ArchiveWriter

ROOT = Path(__file__).resolve().parents[1]
# As in production: a stage stops cleanly (releasing its leases), and a shorter lease is lost on a
# busy two-core machine, its partitions then taken over and rebuilt for nothing.
LEASE_SECONDS = 10


def archive_s3(settings: Settings) -> Any:
    return s3_client(settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)


@dataclass
class Stage:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    prefix: str
    partitions: int
    s3: Any

    @property
    def chats(self) -> StreamSpec:
        return chats_spec(self.prefix, self.partitions)

    @property
    def windows(self) -> StreamSpec:
        return windows_spec(self.prefix, self.partitions)

    @property
    def index(self) -> PgArchiveIndex:
        return PgArchiveIndex(self.pool, self.chats.scope)

    @property
    def keys(self) -> PgArchiveKeys:
        return PgArchiveKeys(self.pool, Sealer.from_secret(self.settings.secret_key))

    @property
    def archive(self) -> S3ChatArchive:
        return S3ChatArchive(self.index, S3Objects(self.s3, self.settings.s3_bucket), self.keys.sealer)

    async def prepare(self) -> None:
        await ensure_groups(self.redis, self.chats)
        await ensure_groups(self.redis, self.windows)

    @asynccontextmanager
    async def aggregating(self, wal_dir: Path, window_ms: int, *, clock: Callable[[], float] = time.time,
                          name: str = "agg", wal_max_bytes: int = 1 << 30,
                          kind: type[Aggregator] = Aggregator) -> AsyncIterator[Aggregator]:
        wal = WriteAheadLog(wal_dir)
        aggregator = kind(self.redis, self.chats, self.windows, wal, self.index, self.keys, window_ms=window_ms,
                                wal_max_bytes=wal_max_bytes, grace_ms=min(200, window_ms // 2), clock=clock)
        aggregator.recover(wal.open())
        consumer = PartitionedConsumer(self.redis, self.chats, CHAT_AGGREGATOR, f"{name}-{uuid.uuid4().hex[:6]}",
                                       decode_entry, aggregator, PgFences(self.pool, self.chats.scope),
                                       batch_size=1000, lease_seconds=LEASE_SECONDS, block_ms=100)
        stop = asyncio.Event()

        async def ticking() -> None:
            while not stop.is_set():
                await aggregator.tick(consumer.fences)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)

        tasks = [asyncio.create_task(consumer.run(stop=stop)), asyncio.create_task(ticking())]
        try:
            yield aggregator
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            wal.close()

    @asynccontextmanager
    async def writing(self, s3: Any | None = None) -> AsyncIterator[None]:
        fences = PgFences(self.pool, self.windows.scope)
        writer = ArchiveWriter(self.pool, self.redis, self.chats, self.index,
                               S3Objects(s3 or self.s3, self.settings.s3_bucket), fences)
        consumer = PartitionedConsumer(self.redis, self.windows, ARCHIVE_WRITER, f"w-{uuid.uuid4().hex[:6]}",
                                       decode_window, writer, fences, batch_size=4, lease_seconds=LEASE_SECONDS,
                                       block_ms=100)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop=stop))
        try:
            yield
        finally:
            stop.set()
            await task

    async def stream_ends(self) -> dict[int, str]:
        """The newest entry id of each partition that has any."""
        ends = {}
        for partition in range(self.partitions):
            newest = await self.redis.xrevrange(self.chats.key(partition), count=1)
            if newest:
                entry = newest[0][0]
                ends[partition] = entry.decode() if isinstance(entry, bytes) else str(entry)
        return ends

    async def archived_all(self) -> bool:
        ends, positions = await self.stream_ends(), await self.index.positions()
        return all(p in positions and pos(positions[p].last_entry) >= pos(end) for p, end in ends.items())

    async def whole_history(self, chat_id: uuid.UUID, page: int = 50) -> list[Message]:
        """Every archived message of a chat, newest pages first, as a reader would page back."""
        found: list[Message] = []
        before: int | None = None
        while True:
            got, more = await self.archive.page(chat_id, None, before, page, True)
            found = got + found
            if not got or not more:
                return found
            before = got[0].seq


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


class WorkerProcess:
    """One `newfriends worker NAME` OS process, started again after each kill; every life of it
    appends to one log file."""

    def __init__(self, settings: Settings, name: str, log_path: Path, **env: str) -> None:
        self._env = {**os.environ, **settings_env(settings), "LOG_LEVEL": "INFO", **env}
        self.name, self.log_path = name, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.kills = 0

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", "worker", self.name, env=self._env, cwd=ROOT, stdout=log,
                stderr=asyncio.subprocess.STDOUT)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            await self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


async def archived_messages(stage: Stage, chat_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Message]]:
    """Every archived message of these chats as the index and the objects hold them, each object read
    once whole: duplicates and overlaps show, nothing is merged away."""
    rows = await stage.pool.fetch("SELECT chat_id, seq_from, seq_to, messages, object_key, byte_offset, byte_length"
                                  " FROM chat_archive_segments WHERE chat_id = ANY($1) ORDER BY chat_id, seq_from",
                                  chat_ids)
    data_keys = await stage.keys.data_keys(chat_ids)
    bodies: dict[str, bytes] = {}
    for key in {r["object_key"] for r in rows}:
        found = await asyncio.to_thread(stage.s3.get_object, Bucket=stage.settings.s3_bucket, Key=key)
        bodies[key] = found["Body"].read()
    result: dict[uuid.UUID, list[Message]] = {c: [] for c in chat_ids}
    for r in rows:
        body, data_key = bodies[r["object_key"]], data_keys[r["chat_id"]]
        assert data_key is not None, f"chat {r['chat_id']} is erased"
        segment = Segment(r["chat_id"], r["seq_from"], r["seq_to"], r["messages"], r["object_key"], r["byte_offset"],
                          r["byte_length"])
        result[r["chat_id"]] += read_segment(data_key, segment, body[segment.offset:segment.offset + segment.length])
    return result


class TcpGate:
    """A TCP relay in front of a server that can be shut: while shut, connections are refused and the
    open ones are cut, as when the server is unreachable."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            link.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}
