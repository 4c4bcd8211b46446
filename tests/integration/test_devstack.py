import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from botocore.exceptions import ClientError

from infra.devstack import DevStackError, EmbeddedStack, s3_client

BUCKET = "devstack-test"


async def _pg(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path) as services:
        asyncio.run(_pg(services.database_url, "CREATE TABLE notes (body text)"))
        asyncio.run(_pg(services.database_url, "INSERT INTO notes VALUES ($1)", "kept"))
        redis.Redis.from_url(services.redis_url).set("greeting", "hello")
        s3 = s3_client(services.s3_endpoint_url, services.s3_access_key, services.s3_secret_key)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="photos/1.txt", Body=b"0123456789")
        first = services

    assert (tmp_path / "s3-credentials.json").stat().st_mode & 0o777 == 0o600
    with EmbeddedStack(tmp_path) as services:
        assert (services.s3_access_key, services.s3_secret_key) == (first.s3_access_key, first.s3_secret_key)
        # Where the ports are still free, the same ones: photo links handed out before still work.
        assert (services.s3_endpoint_url, services.cdn_url, services.database_url, services.redis_url) \
            == (first.s3_endpoint_url, first.cdn_url, first.database_url, first.redis_url)
        assert asyncio.run(_pg(services.database_url, "SELECT body FROM notes")) == "kept"
        assert redis.Redis.from_url(services.redis_url).get("greeting") == b"hello"
        s3 = s3_client(services.s3_endpoint_url, services.s3_access_key, services.s3_secret_key)
        assert s3.get_object(Bucket=BUCKET, Key="photos/1.txt")["Body"].read() == b"0123456789"
        ranged = s3.get_object(Bucket=BUCKET, Key="photos/1.txt", Range="bytes=2-4")
        assert ranged["Body"].read() == b"234"
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="photos/")
        assert [item["Key"] for item in listed["Contents"]] == ["photos/1.txt"]

        forged = s3_client(services.s3_endpoint_url, services.s3_access_key, "not-the-secret")
        with pytest.raises(ClientError) as refused:
            forged.get_object(Bucket=BUCKET, Key="photos/1.txt")
        assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_only_requested_services_start(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path, postgres=False, s3=False) as services:
        assert services.redis_url and not services.database_url and not services.s3_endpoint_url
        assert redis.Redis.from_url(services.redis_url).ping()


def test_postgres_restarts_after_being_killed(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path, redis=False, s3=False) as services:
        asyncio.run(_pg(services.database_url, "CREATE TABLE notes AS SELECT 'committed' AS body"))
        os.kill(_postmaster_pid(tmp_path), signal.SIGKILL)
    assert (tmp_path / "postgres" / "postmaster.pid").exists()

    with EmbeddedStack(tmp_path, redis=False, s3=False) as services:
        assert asyncio.run(_pg(services.database_url, "SELECT body FROM notes")) == "committed"
        os.kill(_postmaster_pid(tmp_path), signal.SIGKILL)

    # The stale pid now belongs to an unrelated live process, which PostgreSQL alone refuses when
    # it may signal that process, i.e. when both run as the same user.
    pgdata = (tmp_path / "postgres").stat()
    with subprocess.Popen(["sleep", "60"], user=pgdata.st_uid, group=pgdata.st_gid) as unrelated:
        lock = tmp_path / "postgres" / "postmaster.pid"
        lines = lock.read_text().split("\n")
        lock.write_text("\n".join([str(unrelated.pid), *lines[1:]]))
        try:
            with EmbeddedStack(tmp_path, redis=False, s3=False) as services:
                assert asyncio.run(_pg(services.database_url, "SELECT body FROM notes")) == "committed"
        finally:
            unrelated.kill()


def test_orphan_of_a_dead_owner_is_stopped(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with subprocess.Popen(["true"]) as owner:
        pass
    with subprocess.Popen(["sleep", "60"]) as orphan:
        record = {"pid": orphan.pid, "started": psutil.Process(orphan.pid).create_time(),
                  "owner": owner.pid, "owner_started": 0.0}
        (tmp_path / "run" / "redis.json").write_text(json.dumps(record))
        with EmbeddedStack(tmp_path, postgres=False, s3=False):
            assert orphan.wait(5) == -signal.SIGTERM


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    first, second = (EmbeddedStack(tmp_path, postgres=False, s3=False) for _ in range(2))
    with first, pytest.raises(DevStackError, match="in use"), second:
        pass


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on PR_SET_PDEATHSIG")
def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from infra.devstack import EmbeddedStack\n"
        "with EmbeddedStack(Path(sys.argv[1])):\n"
        "    print('up', flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"up\n"
        children = [json.loads(path.read_text())["pid"] for path in (tmp_path / "run").glob("*.json")]
        assert len(children) == 3
    finally:
        parent.kill()
        parent.wait()
    assert all(_gone(pid, 10) for pid in children)

    with EmbeddedStack(tmp_path) as services:
        assert redis.Redis.from_url(services.redis_url).ping()
