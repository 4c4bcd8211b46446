import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from infra.devstack import free_port
from tests.e2e.conftest import gql, sign_up
from workers import registry

LOG_IN = ('mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) {'
          ' __typename ... on AuthPayload { me { id } } } }')
SERVICE_URLS = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL")


@contextmanager
def dev_stack(data_dir: Path, port: int) -> Iterator[str]:
    """`newfriends dev` exactly as `make run` starts it, with no service configured."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_URLS}
    env.update(PORT=str(port), NEWFRIENDS_DATA_DIR=str(data_dir), NEWFRIENDS_DEMO="0", ARGON2_TIME_COST="1",
               ARGON2_MEMORY_KIB="1024")
    log_path = data_dir.parent / f"dev-{port}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "dev"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _ready(base):
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.25)
        # Announced once the API answers (the supervisor looks twice a second).
        while f"ready: GraphiQL at http://127.0.0.1:{port}/graphql" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"dev did not stop on SIGTERM:\n{log_path.read_text()[-4000:]}") from None


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(cmdline)
    return found


async def _scrape(url: str) -> str:
    deadline = time.monotonic() + 30  # a worker serves its metrics a moment after it starts
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                return (await client.get(url)).text
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def test_make_run_keeps_accounts_across_restarts(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "state", free_port()
    with dev_stack(data_dir, port) as base:
        account = await sign_up(base)
    assert _processes_using(data_dir) == []  # SIGTERM stopped every service it started
    with dev_stack(data_dir, port) as base:
        login = (await gql(base, LOG_IN, {"e": account.email, "p": account.password}))["data"]["logIn"]
        assert login["me"]["id"] == account.id
        # Every worker's metrics, where `newfriends simulate` finds them; the archive writer's among them.
        exporters = (data_dir / "worker-metrics").read_text().split()
        assert len(exporters) == len(registry())
        pages = [await _scrape(url) for url in exporters]
        assert all("archive_objects_written_total" in page for page in pages)  # all share one registry
    assert _processes_using(data_dir) == []
