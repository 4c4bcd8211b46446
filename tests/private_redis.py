import asyncio
from pathlib import Path

from redis import asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError

from infra.devstack import free_port, redis_server_binary

WAIT = 10.0


class PrivateRedis:
    """A throwaway redis-server this test may kill, pause and restart on the same port."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self._workdir = workdir
        self._extra = extra_args
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            redis_server_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._workdir)),
            *("--save", "", "--appendonly", "no"), *self._extra,
            stdout=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(WAIT), redis.Redis.from_url(self.url) as client:
            while True:
                try:
                    await client.ping()
                    return
                except RedisConnectionError:
                    await asyncio.sleep(0.02)

    def signal(self, signum: int) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
