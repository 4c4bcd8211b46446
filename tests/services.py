import asyncio
import os
import secrets
import socket
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
from botocore.exceptions import ClientError

from infra.devstack import EmbeddedStack, redis_answers, s3_client

LOCAL_POSTGRES_USERS = ("postgres", "root")
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
PROBE_TIMEOUT = 0.5
T = TypeVar("T")


@dataclass(frozen=True)
class TestServices:
    __test__ = False  # not a pytest test class, despite the name

    database_url: str
    admin_database_url: str
    redis_url: str
    redis_prefix: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # Callers may already be inside an event loop (async fixtures, benchmarks): use a private one.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


async def _pg_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):  # TimeoutError is an OSError
        return False
    await conn.close()
    return True


def _local_postgres() -> str | None:
    if not _port_open("127.0.0.1", 5432):
        return None
    for user in LOCAL_POSTGRES_USERS:
        url = f"postgresql://{user}@127.0.0.1:5432/postgres"
        if _run(_pg_answers(url)):
            return url
    return None


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        # Pools a test forgot to close would otherwise block the DROP.
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
    finally:
        await conn.close()


def _delete_redis_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def _delete_bucket(s3: Any, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except ClientError as error:
        # A test that deleted the bucket itself has done our job.
        if error.response["Error"]["Code"] != "NoSuchBucket":
            raise


@contextmanager
def test_services(tmp_dir: Path) -> Iterator[TestServices]:
    run_id = secrets.token_hex(6)
    env = os.environ
    with ExitStack() as cleanup:
        # Configured servers first, then the usual local ones, then our own: a fresh machine has none.
        admin_url = env.get("TEST_DATABASE_URL") or _local_postgres() or ""
        local_redis = LOCAL_REDIS_URL if redis_answers(LOCAL_REDIS_URL, PROBE_TIMEOUT) else ""
        redis_url = env.get("TEST_REDIS_URL") or local_redis
        s3_endpoint = env.get("TEST_S3_ENDPOINT_URL", "")
        s3_keys = (env.get("TEST_S3_ACCESS_KEY", ""), env.get("TEST_S3_SECRET_KEY", ""))
        if not (admin_url and redis_url and s3_endpoint):
            stack = EmbeddedStack(
                tmp_dir / "devstack", postgres=not admin_url, redis=not redis_url, s3=not s3_endpoint
            )
            embedded = cleanup.enter_context(stack)
            admin_url = admin_url or embedded.database_url
            redis_url = redis_url or embedded.redis_url
            if not s3_endpoint:
                s3_endpoint = embedded.s3_endpoint_url
                s3_keys = (embedded.s3_access_key, embedded.s3_secret_key)

        database = f"nft_{run_id}"
        _run(_create_database(admin_url, database))
        cleanup.callback(lambda: _run(_drop_database(admin_url, database)))

        prefix = f"nft-{run_id}:"
        cleanup.callback(_delete_redis_keys, redis_url, prefix)

        bucket = f"nft-{run_id}"
        s3 = s3_client(s3_endpoint, *s3_keys)
        s3.create_bucket(Bucket=bucket)
        cleanup.callback(_delete_bucket, s3, bucket)

        yield TestServices(
            database_url=_with_database(admin_url, database),
            admin_database_url=admin_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            s3_endpoint_url=s3_endpoint,
            s3_access_key=s3_keys[0],
            s3_secret_key=s3_keys[1],
            s3_bucket=bucket,
        )


# Test modules import this; without the flag pytest would collect it as a test function.
test_services.__test__ = False  # type: ignore[attr-defined]
