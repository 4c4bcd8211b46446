"""Real `newfriends worker swipe-writer` processes for the swipe acceptance tests, and what Redis says
about them: who leases which partition, and what is still waiting in the streams."""
import asyncio
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis.asyncio as aioredis

from infra.settings import Settings
from infra.streams import StreamSpec
from infra.swipe_queue import SWIPE_WRITER, RedisSwipeQueue, swipes_spec
from tests.conftest import settings_env

ROOT = Path(__file__).resolve().parents[2]


class WriterProcess:
    """One swipe-writer OS process that can be started again after it was killed; every life of it
    appends to the same log file."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self._env = {**os.environ, **settings_env(settings), "LOG_LEVEL": "INFO", **env}
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        assert not self.alive
        with open(self.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", "worker", "swipe-writer", env=self._env, cwd=ROOT,
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL: no clean stop, no lease released, whatever it was doing is cut off."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        await self._proc.wait()

    async def stop(self) -> int:
        """SIGTERM and the exit code; a writer that does not stop cleanly in time is killed."""
        if not self.alive:
            return -1
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._proc.wait(), 20)
        except TimeoutError:
            await self.kill()
            return -9

    def holds(self, holder: str | None) -> bool:
        # Consumer ids are host:pid:random (workers/swipe_writer.py); a lease value is one of them.
        return self.alive and holder is not None and f":{self.pid}:" in holder

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


async def discover_spec(redis: aioredis.Redis, prefix: str, members: int, timeout: float = 30) -> StreamSpec:
    """The swipe stream as the running writers configured it, whatever SWIPE_PARTITIONS says: a writer
    joins the members only after it created every partition."""
    members_key = swipes_spec(prefix, 1).members_key(SWIPE_WRITER)
    deadline = time.monotonic() + timeout
    while await redis.zcard(members_key) < members:
        assert time.monotonic() < deadline, f"fewer than {members} writers joined under {prefix!r}"
        await asyncio.sleep(0.05)
    pattern = re.compile(re.escape(prefix) + r"\{swipes:(\d+)\}")
    found = [int(m.group(1)) async for key in redis.scan_iter(match=f"{prefix}{{swipes:*}}", count=1000)
             if (m := pattern.fullmatch(key.decode()))]
    return swipes_spec(prefix, max(found) + 1)


async def lease_holders(redis: aioredis.Redis, spec: StreamSpec) -> list[str | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(spec.partitions):
            pipe.get(spec.lease_key(partition, SWIPE_WRITER))
        values = await pipe.execute()
    return [None if v is None else v.decode() for v in values]


async def owned_by(redis: aioredis.Redis, spec: StreamSpec, writers: list[WriterProcess]) -> list[set[int]]:
    holders = await lease_holders(redis, spec)
    return [{p for p, holder in enumerate(holders) if writer.holds(holder)} for writer in writers]


async def backlog(redis: aioredis.Redis, spec: StreamSpec) -> tuple[int, int]:
    """(pending, lag) of the swipe-writer group over all partitions: (0, 0) once everything is applied."""
    pending = lag = 0
    for partition in range(spec.partitions):
        key = spec.key(partition)
        for info in await redis.xinfo_groups(key):
            if info["name"] != SWIPE_WRITER.encode():
                continue
            pending += int(info["pending"])
            if info.get("lag") is not None:
                lag += int(info["lag"])
            else:  # Redis cannot tell (or predates 7.0): count what follows the last delivery
                after = b"(" + info["last-delivered-id"]
                lag += len(await redis.xrange(key, after, "+") or [])
    return pending, lag


async def still_pending(queue: RedisSwipeQueue, targets: Mapping[uuid.UUID, Iterable[uuid.UUID]]) -> int:
    """How many of these swipes the queue still answers for itself (it forgets those it knows written)."""
    users, left = list(targets), 0
    for i in range(0, len(users), 50):  # a bounded number at once: the client's pool has a ceiling
        found = await asyncio.gather(*(queue.pending(u, list(targets[u])) for u in users[i:i + 50]))
        left += sum(len(f) for f in found)
    return left
