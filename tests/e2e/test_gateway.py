"""The gateway's acceptance points against real API processes: oversized documents refused fast and
before anything runs, the subscription cap and what 5,000 subscriptions cost a process, production
mode (no introspection, no suggestions) and the browser origins a server lets in, over HTTP (CORS)
and WebSocket alike."""
import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Origin

from infra.settings import Settings
from tests.e2e.chats import open_socket
from tests.e2e.conftest import Account, running_server, sign_up, ws_url
from tests.e2e.raw_ws import LEGACY_WS, TRANSPORT_WS, connect

ALLOWED, OTHER = "https://app.newfriends.test", "https://elsewhere.test"
RAN = 'updateProfile(input: {bio: "it ran"}) { __typename'
REPEATED = "mutation { " + RAN + " ... on Me { " + "id " * 2000 + "} } }"
ALIASED = "{ " + " ".join(f"a{i}: nearbyCandidates {{ edges {{ cursor }} }}" for i in range(500)) + " }"
# No type of the schema leads back to itself, so no document 50 fields deep is valid; the depth
# limit must be among what refuses it, not only the unknown field.
NESTED = "mutation { " + RAN + " ... on Me { " + "photos { " * 49 + "id" + " }" * 49 + " } } }"
# Thirty fragments, each spreading the one before twice: a few hundred tokens for a billion fields.
DOUBLED = "mutation { " + RAN + " ...F30 } } fragment F0 on Me { id } " + " ".join(
    f"fragment F{i} on Me {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 31))
ONE = {"query": "mutation { " + RAN + " } }"}
DOCUMENTS: dict[str, tuple[str, str]] = {
    "2,000 repetitions of one field": (REPEATED, "'id' is asked 2000 times in one selection"),
    "500 aliases of nearbyCandidates": (ALIASED, "500 aliases found"),
    "nesting 50 levels deep": (NESTED, "exceeds maximum operation depth of 10"),
    "fragments doubling 30 times": (DOUBLED, "fields with fragments spelled out"),
}
# (body, HTTP status, the only code, a message that says which limit refused it)
REFUSED: dict[str, tuple[Any, int, str, str]] = {
    **{name: ({"query": query}, 200, "GRAPHQL_VALIDATION_FAILED", message)
       for name, (query, message) in DOCUMENTS.items()},
    "a batch of 100 operations": ([ONE] * 100, 400, "BAD_REQUEST", "A batch holds 1 to 10 operations"),
    "a 5 MB document": ({"query": ONE["query"] + " " * 5_000_000}, 413, "PAYLOAD_TOO_LARGE", "Request body is over"),
}
BIO = "{ me { bio } }"
MY_EVENTS = "subscription { myEvents { __typename } }"
MB = 1024 * 1024


async def _bio(client: httpx.AsyncClient, base: str, account: Account) -> str:
    response = await client.post(f"{base}/graphql", json={"query": BIO},
                                 headers={"authorization": f"Bearer {account.access_token}"})
    bio: str = response.json()["data"]["me"]["bio"]
    return bio


def _slow(took: dict[str, float]) -> dict[str, str]:
    print("median refusal times:", {name: f"{seconds * 1000:.1f} ms" for name, seconds in took.items()})
    return {name: f"{seconds * 1000:.0f} ms" for name, seconds in took.items() if seconds >= 0.1}


async def test_oversized_documents_are_refused_within_100_ms_before_anything_runs(api: str) -> None:
    account = await sign_up(api)
    headers = {"authorization": f"Bearer {account.access_token}"}
    took: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{api}/graphql", json={"query": "{ __typename }"})  # a warm connection
        for name, (body, status, code, message) in REFUSED.items():
            content = json.dumps(body).encode()
            times = []
            for _ in range(5):
                started = time.perf_counter()
                response = await client.post(f"{api}/graphql", content=content,
                                             headers={**headers, "content-type": "application/json"})
                times.append(time.perf_counter() - started)
                answer = response.json()
                assert response.status_code == status, (name, response.text[:300])
                assert answer.get("data") is None, (name, response.text[:300])
                assert {e["extensions"]["code"] for e in answer["errors"]} == {code}, (name, response.text[:300])
                assert any(message in e["message"] for e in answer["errors"]), (name, response.text[:300])
            took[name] = statistics.median(times)
        # Had any of them run, the profile would say so.
        assert await _bio(client, api, account) == ""
    slow = _slow(took)
    assert not slow, f"refused too slowly (median of 5): {slow}"


async def test_oversized_documents_are_refused_as_fast_over_a_websocket(api: str) -> None:
    account = await sign_up(api)
    took: dict[str, float] = {}
    async with open_socket(api, account.access_token) as socket:
        for name, (query, message) in DOCUMENTS.items():
            times = []
            for n in range(5):
                op_id = f"{name} {n}"
                text = json.dumps({"type": "subscribe", "id": op_id, "payload": {"query": query}})
                started = time.perf_counter()
                await socket.ws.send(text)
                frame = await socket.frame(op_id)
                times.append(time.perf_counter() - started)
                assert frame["type"] == "error", (name, str(frame)[:300])
                assert {e["extensions"]["code"] for e in frame["payload"]} == {"GRAPHQL_VALIDATION_FAILED"}, name
                assert any(message in e["message"] for e in frame["payload"]), (name, str(frame)[:300])
            took[name] = statistics.median(times)
    async with open_socket(api, account.access_token) as socket:
        text = json.dumps({"type": "subscribe", "id": "5 MB", "payload": {"query": ONE["query"] + " " * 5_000_000}})
        started = time.perf_counter()
        await socket.ws.send(text)
        assert (await socket.frame("5 MB"))["type"] == "closed"
        took["a 5 MB document"] = time.perf_counter() - started
        assert socket.ws.close_code == 1009  # message too big: uvicorn refuses the frame before the app sees it
    async with httpx.AsyncClient(timeout=30) as client:
        assert await _bio(client, api, account) == ""
    slow = _slow(took)
    assert not slow, f"refused too slowly over a WebSocket (median of 5): {slow}"


def _pid_serving(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and b"--port" in argv and str(port).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no API process serves port {port}")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def own_api(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A process of this module's alone, so that its memory is this module's doing."""
    with running_server(settings, tmp_path_factory.mktemp("gateway")) as base:
        yield base


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_5000_subscriptions_on_one_socket_get_the_cap_and_cost_little(own_api: str, protocol: str) -> None:
    port = int(own_api.rsplit(":", 1)[1])
    pid = _pid_serving(port)
    account = await sign_up(own_api)
    socket = await connect("127.0.0.1", port, protocol)
    try:
        await socket.init(account.access_token)
        before = _rss(pid)
        for n in range(5000):
            socket.subscribe(str(n), MY_EVENTS)
        refused: dict[str, Any] = {}
        while len(refused) < 4900:
            message = await socket.next_message(timeout=30)
            assert message["type"] == "error", message
            refused[message["id"]] = message["payload"]
        grown = _rss(pid) - before
        assert set(refused) == {str(n) for n in range(100, 5000)}
        errors = [p if isinstance(p, dict) else p[0] for p in refused.values()]
        assert {(e["message"], e["extensions"]["code"]) for e in errors} == {
            ("Subscription limit reached", "BAD_REQUEST")}
        # The hundred under the cap are live.
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(f"{own_api}/graphql", json={"query": 'mutation { updateProfile(input: {bio: "x"}) {'
                                                                   " __typename } }"},
                              headers={"authorization": f"Bearer {account.access_token}"})
        live: set[str] = set()
        while len(live) < 100:
            message = await socket.next_message(timeout=10)
            assert message["type"] in ("next", "data"), message
            live.add(message["id"])
        assert live == {str(n) for n in range(100)}
        assert socket.close_code is None
    finally:
        socket.abort()
    assert grown < 50 * MB, f"the API process grew by {grown / MB:.1f} MB"
    print(f"{protocol}: 5,000 subscriptions grew the API process by {grown / MB:.1f} MB")


@pytest.fixture(scope="module")
def production_api(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(settings, tmp_path_factory.mktemp("origins"), NEWFRIENDS_ENV="production",
                        NEWFRIENDS_SECRET_KEY=secrets.token_urlsafe(48), ALLOWED_ORIGINS=ALLOWED) as base:
        yield base


async def test_only_allowed_origins_get_cors_headers(production_api: str) -> None:
    preflight = {"access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    async with httpx.AsyncClient(timeout=30) as client:
        for origin in (ALLOWED, OTHER):
            asked = await client.options(f"{production_api}/graphql", headers={"origin": origin, **preflight})
            posted = await client.post(f"{production_api}/graphql", json={"query": "{ __typename }"},
                                       headers={"origin": origin})
            assert posted.json() == {"data": {"__typename": "Query"}}  # CORS binds browsers, not the server
            if origin == ALLOWED:
                assert asked.status_code == 200, asked.text
                assert asked.headers["access-control-allow-origin"] == ALLOWED
                assert {"authorization", "content-type"} <= {
                    h.strip().lower() for h in asked.headers["access-control-allow-headers"].split(",")}
                assert posted.headers["access-control-allow-origin"] == ALLOWED
            else:
                assert asked.status_code == 400, asked.text
                assert "access-control-allow-origin" not in asked.headers
                assert "access-control-allow-origin" not in posted.headers


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_websockets_from_other_origins_are_refused_at_the_handshake(production_api: str, protocol: str) -> None:
    account = await sign_up(production_api)
    subprotocols = [websockets.Subprotocol(protocol)]
    async with websockets.connect(ws_url(production_api), subprotocols=subprotocols, origin=Origin(ALLOWED)) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {account.access_token}"}}))
        async with asyncio.timeout(10):
            while (ack := json.loads(await ws.recv()))["type"] == "ka":
                pass
        assert ack["type"] == "connection_ack", ack
    # Apps send no Origin, and a page the API serves itself is on the API's own origin.
    for origin in (None, Origin(production_api)):
        async with websockets.connect(ws_url(production_api), subprotocols=subprotocols, origin=origin) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {account.access_token}"}}))
            async with asyncio.timeout(10):
                while (ack := json.loads(await ws.recv()))["type"] == "ka":
                    pass
            assert ack["type"] == "connection_ack", (origin, ack)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(production_api), subprotocols=subprotocols, origin=Origin(OTHER)):
            pass
    assert refused.value.response.status_code == 403


async def test_without_allowed_origins_browsers_reach_the_api_only_from_its_own_origin(api: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        posted = await client.post(f"{api}/graphql", json={"query": "{ __typename }"}, headers={"origin": OTHER})
    assert "access-control-allow-origin" not in posted.headers
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol(TRANSPORT_WS)],
                                      origin=Origin(OTHER)):
            pass
    assert refused.value.response.status_code == 403


INTROSPECTION = "{ __schema { types { name } } }"
MISSPELT = "{ interestTag { slug } }"  # interestTags


async def test_production_refuses_introspection_and_suggests_nothing(production_api: str) -> None:
    account = await sign_up(production_api)
    answers = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for name, query in (("introspection", INTROSPECTION), ("misspelt", MISSPELT)):
            response = await client.post(f"{production_api}/graphql", json={"query": query},
                                         headers={"authorization": f"Bearer {account.access_token}"})
            answers[f"{name} over HTTP"] = response.json()
    async with open_socket(production_api, account.access_token) as socket:
        for name, query in (("introspection", INTROSPECTION), ("misspelt", MISSPELT)):
            await socket.start(name, query)
            frame = await socket.frame(name)
            assert frame["type"] == "error", frame
            answers[f"{name} over a WebSocket"] = {"errors": frame["payload"]}
    for name, answer in answers.items():
        assert answer.get("data") is None, (name, answer)
        assert {e["extensions"]["code"] for e in answer["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}, (name, answer)
        assert "Did you mean" not in json.dumps(answer), (name, answer)
        if name.startswith("introspection"):
            assert all("introspection has been disabled" in e["message"] for e in answer["errors"]), (name, answer)
        else:
            assert [e["message"] for e in answer["errors"]] == ["Cannot query field 'interestTag' on type 'Query'."]
