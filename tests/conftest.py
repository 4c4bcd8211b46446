import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infra.app import Runtime, open_runtime
from infra.db import migrate
from infra.settings import Settings
from tests.private_redis import PrivateRedis
from tests.redis_cluster import local_cluster
from tests.services import TestServices, test_services


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServices]:
    with test_services(tmp_path_factory.mktemp("services")) as found:
        yield found


@pytest.fixture(scope="session")
def settings(services: TestServices, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=services.database_url, redis_url=services.redis_url, redis_prefix=services.redis_prefix,
        s3_endpoint_url=services.s3_endpoint_url, s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key, s3_bucket=services.s3_bucket,
        secret_key=secrets.token_urlsafe(48),
        # Cheap hashes: the suite signs in many users; the production cost is a setting.
        argon2_time_cost=1, argon2_memory_kib=1024,
        # Every test comes from one address; the limits stay on (and cost what they cost) but a
        # hundred times higher. tests/e2e/test_rate_limits.py runs servers with the real ones.
        rate_limit_scale=100.0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process (server, worker) use the test services."""
    return {
        "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix, "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "S3_ACCESS_KEY": settings.s3_access_key, "S3_SECRET_KEY": settings.s3_secret_key,
        "S3_BUCKET": settings.s3_bucket, "NEWFRIENDS_SECRET_KEY": settings.secret_key,
        "NEWFRIENDS_DATA_DIR": str(settings.data_dir), "ARGON2_TIME_COST": str(settings.argon2_time_cost),
        "ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib), "NEWFRIENDS_DEMO": "0",
        "RATE_LIMIT_SCALE": str(settings.rate_limit_scale),
    }


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> None:
    await migrate(settings.database_url)


@pytest.fixture(scope="session")
async def runtime(settings: Settings, migrated: None) -> AsyncIterator[Runtime]:
    async with open_runtime(settings) as opened:
        yield opened


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a local 3-primary Redis Cluster, started on first use and stopped after the run."""
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A redis-server of the test's own, to kill, pause and restart."""
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
