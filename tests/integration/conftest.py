import pytest

from tests.services import TestServices


# Tests that take this run twice: on the suite's Redis and on a local Redis Cluster.
@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, services: TestServices) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster"))
    return services.redis_url
