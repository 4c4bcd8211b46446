import asyncio
import json
from contextlib import suppress
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
from botocore.exceptions import ClientError

import tests.services
from infra.devstack import EmbeddedStack, free_port, s3_client
from tests.services import TestServices, test_services

ENV_VARS = (
    "TEST_DATABASE_URL", "TEST_REDIS_URL", "TEST_S3_ENDPOINT_URL", "TEST_S3_ACCESS_KEY", "TEST_S3_SECRET_KEY",
)


async def _fetch(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _exercise(services: TestServices) -> None:
    asyncio.run(_fetch(services.database_url, "CREATE TABLE t AS SELECT 1 AS id"))
    assert str(asyncio.run(_fetch(services.database_url, "SELECT current_database()"))).startswith("nft_")
    client = redis.Redis.from_url(services.redis_url)
    client.set(f"{services.redis_prefix}a", "1")
    assert client.get(f"{services.redis_prefix}a") == b"1"
    s3 = s3_client(services.s3_endpoint_url, services.s3_access_key, services.s3_secret_key)
    s3.put_object(Bucket=services.s3_bucket, Key="x/1.bin", Body=b"1")
    assert s3.get_object(Bucket=services.s3_bucket, Key="x/1.bin")["Body"].read() == b"1"


@pytest.fixture
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_discovered_services_work(tmp_path: Path, no_service_env: None) -> None:
    with test_services(tmp_path) as services:
        _exercise(services)


def test_falls_back_to_embedded_services(
    tmp_path: Path, no_service_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend this is a fresh machine: nothing answers on the usual ports.
    monkeypatch.setattr(tests.services, "_local_postgres", lambda: None)
    monkeypatch.setattr(tests.services, "LOCAL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with test_services(tmp_path) as services:
        assert ":5432/" not in services.database_url and ":6379/" not in services.redis_url
        _exercise(services)
        records = (tmp_path / "devstack" / "run").glob("*.json")
        children = [json.loads(record.read_text())["pid"] for record in records]
        assert len(children) == 3
    assert not [pid for pid in children if psutil.pid_exists(pid)]


def test_clean_up_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Servers of our own that outlive test_services(), so we can look at what it left behind.
    with EmbeddedStack(tmp_path / "outer") as outer:
        monkeypatch.setenv("TEST_DATABASE_URL", outer.database_url)
        monkeypatch.setenv("TEST_REDIS_URL", outer.redis_url)
        monkeypatch.setenv("TEST_S3_ENDPOINT_URL", outer.s3_endpoint_url)
        monkeypatch.setenv("TEST_S3_ACCESS_KEY", outer.s3_access_key)
        monkeypatch.setenv("TEST_S3_SECRET_KEY", outer.s3_secret_key)
        client = redis.Redis.from_url(outer.redis_url)
        client.set("someone-else", "kept")
        loop = asyncio.new_event_loop()

        with test_services(tmp_path / "inner") as services:
            assert services.admin_database_url == outer.database_url
            _exercise(services)
            client.hset(f"{services.redis_prefix}b", "f", "v")
            # Left open on purpose: clean-up must cope with a connection a test forgot to close.
            forgotten = loop.run_until_complete(asyncpg.connect(services.database_url))
            database = str(asyncio.run(_fetch(services.database_url, "SELECT current_database()")))

        exists = "SELECT count(*) FROM pg_database WHERE datname = $1"
        assert asyncio.run(_fetch(outer.database_url, exists, database)) == 0
        assert list(client.scan_iter(match=f"{services.redis_prefix}*")) == []
        assert client.get("someone-else") == b"kept"
        s3 = s3_client(outer.s3_endpoint_url, outer.s3_access_key, outer.s3_secret_key)
        with pytest.raises(ClientError):
            s3.head_bucket(Bucket=services.s3_bucket)
        with suppress(Exception):
            loop.run_until_complete(forgotten.close(timeout=1))
        loop.close()
