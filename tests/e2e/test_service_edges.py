import asyncio
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from infra.settings import Settings
from tests.e2e.conftest import gql, running_server, sign_up, ws_url


@pytest.fixture(scope="module")
def production_api(settings: Settings, migrated: None, edge_dir: Path) -> Iterator[str]:
    with running_server(settings, edge_dir, NEWFRIENDS_ENV="production",
                        NEWFRIENDS_SECRET_KEY=secrets.token_urlsafe(48)) as base:
        yield base


@pytest.fixture(scope="module")
def edge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edges")


async def test_production_hides_the_schema(production_api: str, api: str) -> None:
    introspection = await gql(production_api, "{ __schema { types { name } } }")
    assert introspection.get("data") is None
    assert introspection["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    misspelt = await gql(production_api, "{ interestTag { slug } }")
    assert "Did you mean" not in misspelt["errors"][0]["message"]
    # Development keeps both, for the people building against it.
    assert (await gql(api, "{ __schema { queryType { name } } }"))["data"]["__schema"]["queryType"]["name"] == "Query"
    assert "Did you mean" in (await gql(api, "{ interestTag { slug } }"))["errors"][0]["message"]
    browser = {"accept": "text/html"}
    assert httpx.get(f"{production_api}/graphql", headers=browser).status_code == 404
    page = httpx.get(f"{api}/graphql", headers=browser)
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    # GraphiQL's Headers tab must reach the WebSocket connection_init, or subscriptions cannot sign in.
    assert "wsConnectionParams" in page.text and "window.nfHeaders = newHeaders" in page.text


async def test_production_refuses_to_start_without_a_secret(settings: Settings, edge_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="NEWFRIENDS_SECRET_KEY"), running_server(
        settings, edge_dir, NEWFRIENDS_ENV="production", NEWFRIENDS_SECRET_KEY="short"
    ):
        pass


async def test_health_ready_and_metrics(api: str) -> None:
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api}/readyz").json() == {"ready": True, "postgres": "ok", "redis": "ok"}
    await gql(api, "query TagsForMetrics { interestTags { slug } }")
    await gql(api, "{ me { id } }")
    httpx.post(f"{api}/graphql", content=b"{oops", headers={"content-type": "application/json"})
    metrics = httpx.get(f"{api}/metrics").text
    assert 'graphql_operations_total{operation="TagsForMetrics",type="query"}' in metrics
    assert 'graphql_operation_seconds_bucket{le="0.005",operation="TagsForMetrics",type="query"}' in metrics
    assert 'graphql_errors_total{code="UNAUTHENTICATED"}' in metrics
    assert 'http_rejected_requests_total{code="BAD_REQUEST"}' in metrics
    assert "websocket_connections " in metrics


async def _session_ip(settings: Settings, user_id: str) -> str:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return str(await conn.fetchval("SELECT host(created_ip) FROM sessions WHERE user_id = $1",
                                       uuid.UUID(user_id)))
    finally:
        await conn.close()


async def test_forwarded_for_counts_only_from_trusted_proxies(api: str, settings: Settings, edge_dir: Path) -> None:
    forged = {"x-forwarded-for": "203.0.113.9"}
    async with httpx.AsyncClient(headers=forged) as client:
        direct = await client.post(f"{api}/graphql", json={"query": _SIGN_UP, "variables": _new_person()})
    assert await _session_ip(settings, direct.json()["data"]["signUp"]["me"]["id"]) == "127.0.0.1"
    with running_server(settings, edge_dir, TRUSTED_PROXIES="127.0.0.1") as behind_proxy:
        async with httpx.AsyncClient(headers=forged) as client:
            proxied = await client.post(f"{behind_proxy}/graphql", json={"query": _SIGN_UP, "variables": _new_person()})
    assert await _session_ip(settings, proxied.json()["data"]["signUp"]["me"]["id"]) == "203.0.113.9"


_SIGN_UP = "mutation($i: SignUpInput!) { signUp(input: $i) { ... on AuthPayload { me { id } } } }"


def _new_person() -> dict[str, object]:
    return {"i": {"email": f"ip-{uuid.uuid4().hex[:10]}@example.test", "password": "long enough pw",
                  "displayName": "Ip", "birthDate": "1990-02-02", "gender": "MAN"}}


async def test_unexpected_failures_are_masked_with_an_id(api: str, settings: Settings) -> None:
    account = await sign_up(api)
    # Break the account's row behind the server's back: the server must not leak what went wrong.
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE users SET gender = 'NOT A GENDER' WHERE id = $1", uuid.UUID(account.id))
    finally:
        await conn.close()
    body = await gql(api, "{ me { id gender } }", token=account.access_token)
    error = body["errors"][0]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["extensions"]["errorId"] in error["message"]
    assert "NOT A GENDER" not in str(body) and "Traceback" not in str(body)


async def test_sockets_that_never_initialise_are_closed(settings: Settings, edge_dir: Path) -> None:
    with running_server(settings, edge_dir, WS_INIT_TIMEOUT_SECONDS="1") as base:
        for protocol in ("graphql-ws", "graphql-transport-ws"):
            async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
                started = time.monotonic()
                with pytest.raises(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        await ws.recv()
                assert ws.close_code == 4408, protocol
                assert time.monotonic() - started < 5
