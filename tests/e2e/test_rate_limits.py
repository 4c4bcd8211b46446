"""Rate limits through real servers: shared by two API processes, per address and per user, over
HTTP and WebSocket, refused with RATE_LIMITED and a retry-after before any resolver runs."""
import asyncio
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from infra.settings import Settings
from tests.e2e.conftest import running_server, ws_url

# A tenth of the real limits: two sign-ups an hour per address, thirty swipes a minute per user,
# three token refreshes per five minutes per user.
SCALE = "0.1"
SIGN_UP = """mutation($input: SignUpInput!) { signUp(input: $input) { __typename } }"""
SIGNED_UP = """mutation($input: SignUpInput!) { signUp(input: $input) { ... on AuthPayload { accessToken } } }"""
REFRESH = """mutation { refreshToken(refreshToken: "not a refresh token") { __typename } }"""
FLUSH = 0.3  # a few of the limiter's flush intervals


@pytest.fixture
def two_servers(settings: Settings, migrated: None, tmp_path: Path) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(running_server(settings, tmp_path, RATE_LIMIT_SCALE=SCALE,
                                                  TRUSTED_PROXIES="127.0.0.1")) for _ in range(2)]


def address() -> str:
    return f"198.51.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


async def post(base: str, query: str, variables: dict[str, Any] | None = None, *, ip: str,
               token: str | None = None) -> dict[str, Any]:
    headers = {"x-forwarded-for": ip} | ({"authorization": f"Bearer {token}"} if token else {})
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{base}/graphql", json={"query": query, "variables": variables or {}},
                                     headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def signed_up(base: str) -> str:
    # From an address of its own: at this scale the suite's earlier sign-ups from 127.0.0.1 used it up.
    body = await post(base, SIGNED_UP, {"input": new_account()}, ip=address())
    token: str = body["data"]["signUp"]["accessToken"]
    return token


def new_account() -> dict[str, str]:
    return {"email": f"rl-{uuid.uuid4().hex[:10]}@example.test", "password": "a long enough password",
            "displayName": "Rate", "birthDate": "1990-01-01", "gender": "MAN"}


async def test_sign_ups_per_address_count_across_processes(two_servers: list[str]) -> None:
    first, second = two_servers
    ip = address()
    assert (await post(first, SIGN_UP, {"input": new_account()}, ip=ip))["data"]["signUp"]["__typename"] \
        == "AuthPayload"
    assert (await post(second, SIGN_UP, {"input": new_account()}, ip=ip))["data"]["signUp"]["__typename"] \
        == "AuthPayload"
    await asyncio.sleep(FLUSH)
    refused = await post(first, SIGN_UP, {"input": new_account()}, ip=ip)
    assert refused["data"] is None
    error = refused["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED" and 1 <= error["extensions"]["retryAfterSeconds"] <= 2 * 3600
    # Over HTTP the wait is also a Retry-After header, when nothing of the request was answered.
    refused_alone = {"query": SIGN_UP, "variables": {"input": new_account()}}
    async with httpx.AsyncClient(timeout=30, headers={"x-forwarded-for": ip}) as client:
        alone = await client.post(f"{first}/graphql", json=refused_alone)
        beside_an_answer = await client.post(f"{first}/graphql", json=[refused_alone, {"query": "{ __typename }"}])
    assert alone.headers["retry-after"] == str(alone.json()["errors"][0]["extensions"]["retryAfterSeconds"])
    assert beside_an_answer.json()[1]["data"] and "retry-after" not in beside_an_answer.headers
    # Someone else, somewhere else, is not affected.
    assert (await post(first, SIGN_UP, {"input": new_account()}, ip=address()))["data"]["signUp"]["__typename"] \
        == "AuthPayload"


async def test_aliases_count_each_swipe_and_a_refused_document_runs_nothing(two_servers: list[str]) -> None:
    first, second = two_servers
    token = await signed_up(first)
    targets = [str(uuid.uuid4()) for _ in range(31)]

    def likes(ids: list[str]) -> str:
        return "mutation {" + " ".join(f'l{i}: like(userId: "{t}") {{ __typename }}' for i, t in enumerate(ids)) + "}"

    refused = await post(second, likes(targets), ip=address(), token=token)
    assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    # Thirty fit, from any address and process: nothing of the refused one was counted or run.
    done = await post(first, likes(targets[:30]), ip=address(), token=token)
    assert len(done["data"]) == 30 and all(v == {"__typename": "NotFoundError"} for v in done["data"].values())
    await asyncio.sleep(FLUSH)
    # The other process lets one through before it has heard of these thirty (the overshoot its
    # flush interval allows), then knows: the limit is the user's, wherever they go.
    await post(second, likes(targets[:1]), ip=address(), token=token)
    await asyncio.sleep(FLUSH)
    again = await post(second, likes(targets[:1]), ip=address(), token=token)
    assert again["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_operations_over_websocket_are_limited_too(two_servers: list[str]) -> None:
    # Token refreshes are counted exactly, per user: three in five minutes at this scale.
    token = await signed_up(two_servers[0])
    answers = []
    for base in two_servers:
        async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
                                      additional_headers={"x-forwarded-for": address()}) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            for n in range(2):
                await ws.send(json.dumps({"type": "subscribe", "id": str(n), "payload": {"query": REFRESH}}))
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "next":
                        answers.append(message["payload"])
                    if message["type"] in ("complete", "error"):
                        break
    kinds = [a["data"]["refreshToken"]["__typename"] if a.get("data") else a["errors"][0]["extensions"]["code"]
             for a in answers]
    assert kinds == ["AuthError"] * 3 + ["RATE_LIMITED"], kinds


LOG_IN = """mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { __typename
  ... on Error { code } ... on LimitError { retryAfterSeconds } } }"""


async def test_password_guesses_on_one_account_meet_a_limit_from_any_address(two_servers: list[str]) -> None:
    first, second = two_servers
    victim, bystander = new_account(), new_account()
    for account in (victim, bystander):
        assert "accessToken" in (await post(first, SIGNED_UP, {"input": account}, ip=address()))["data"]["signUp"]

    async def log_in(base: str, account: dict[str, str], password: str) -> dict[str, Any]:
        body = await post(base, LOG_IN, {"e": account["email"], "p": password}, ip=address())
        result: dict[str, Any] = body["data"]["logIn"]
        return result

    # At a tenth of the real limit, two attempts per account in 15 minutes, each from a new address
    # and alternating processes: the per-address limit never comes into it.
    for base in (first, second):
        assert (await log_in(base, victim, "a wrong guess of a password"))["code"] == "INVALID_CREDENTIALS"
    for password in ("another wrong guess", victim["password"]):
        refused = await log_in(first, victim, password)
        assert refused["__typename"] == "LimitError" and refused["code"] == "RATE_LIMITED", refused
        assert 1 <= refused["retryAfterSeconds"] <= 2 * 900
    # Differently written, the same account; another account is untouched.
    assert (await log_in(second, {"email": victim["email"].upper()}, victim["password"]))["code"] == "RATE_LIMITED"
    assert (await log_in(second, bystander, bystander["password"]))["__typename"] == "AuthPayload"
