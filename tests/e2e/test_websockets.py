"""Live sockets, end to end, on both GraphQL-over-WebSocket subprotocols.

A socket is authenticated once, by its connection_init payload, and must close (4401) as soon as
its session ends, whichever server ended it. Nothing may run on a socket that was never accepted.
"""
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import websockets
from gql import GraphQLRequest
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import ClientConnection

from domain.model import Principal
from infra.security import JwtSigner
from infra.settings import Settings
from tests.e2e.conftest import Account, gql, sign_up, ws_url

APOLLO = WebsocketsTransport.APOLLO_SUBPROTOCOL  # legacy "graphql-ws" (subscriptions-transport-ws)
TRANSPORT_WS = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL  # "graphql-transport-ws"
PROTOCOLS = [pytest.param(APOLLO, id="graphql-ws"), pytest.param(TRANSPORT_WS, id="graphql-transport-ws")]
CLOSE_SESSION_ENDED = 4401
# graphql-transport-ws refusals of an init: 4401 (final: refresh first) or strawberry's 4403 (Forbidden).
REFUSED = (4401, 4403)
CLOSE_LIMIT = 5.0  # seconds; the watcher normally closes within tens of milliseconds

MY_EVENTS = """subscription { myEvents { __typename ... on ProfileChanged { me {
  id displayName bio interestTags { slug } discovery { maxDistanceKm } } } } }"""
UPDATE = """mutation($i: ProfileInput!) { updateProfile(input: $i) { __typename ... on Error { code } } }"""
LOG_IN = """mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) {
  ... on AuthPayload { accessToken } ... on Error { code } } }"""


@dataclass
class Socket:
    transport: WebsocketsTransport
    # gql forgets its connection once closed; we keep it to read the close code afterwards.
    connection: ClientConnection

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    async def closed_within(self, seconds: float) -> float:
        """Waits for the server to close this socket; returns when it did (monotonic clock)."""
        await asyncio.wait_for(self.connection.wait_closed(), seconds)
        return time.monotonic()


@asynccontextmanager
async def open_socket(base: str, protocol: str, token: str) -> AsyncIterator[Socket]:
    transport = WebsocketsTransport(
        url=ws_url(base), subprotocols=[protocol], init_payload={"Authorization": f"Bearer {token}"},
        connect_timeout=5, ack_timeout=5, close_timeout=2,
    )
    await transport.connect()
    assert transport.subprotocol == protocol
    connection = transport.adapter.websocket
    assert connection is not None
    try:
        yield Socket(transport, connection)
    finally:
        await transport.close()


@dataclass
class Subscription:
    """myEvents running in the background; collects what arrives and how it ended."""

    socket: Socket
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> "Subscription":
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for result in self.socket.transport.subscribe(GraphQLRequest(MY_EVENTS)):
                await self.events.put({"data": result.data, "errors": result.errors})
        except TransportError as exc:  # the socket closed under it
            self.error = exc

    async def ended(self, seconds: float) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), seconds)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task


async def update_until_heard(base: str, token: str, subscription: Subscription) -> tuple[dict[str, Any],
                                                                                         list[str]]:
    """Updates the profile until the subscriber hears of it.

    There is no acknowledgement that a subscription is listening, so an update made too early is
    lost; updating again until one is heard avoids both a guessed sleep and a flaky test.
    """
    names: list[str] = []
    for attempt in range(20):
        name = f"Heard {attempt} {uuid.uuid4().hex[:6]}"
        names.append(name)
        changes = {"displayName": name, "bio": f"bio of {name}", "interestTags": ["Board games", "tea"],
                   "maxDistanceKm": 42}
        result = await gql(base, UPDATE, {"i": changes}, token)
        assert result["data"]["updateProfile"]["__typename"] == "Me", result
        try:
            return await asyncio.wait_for(subscription.events.get(), 0.5), names
        except TimeoutError:
            continue
    raise AssertionError("the subscriber heard no ProfileChanged after 20 updates")


async def websocket_gauge(base: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith("websocket_connections "):
            return float(line.split()[1])
    raise AssertionError("no websocket_connections gauge in /metrics")


async def assert_gauge_returns(base: str, expected: float) -> None:
    # The server counts a socket down once its handler has unwound, a moment after the close.
    deadline = time.monotonic() + 5
    while (value := await websocket_gauge(base)) != expected:
        assert time.monotonic() < deadline, f"websocket_connections stayed at {value}, expected {expected}"
        await asyncio.sleep(0.05)


async def settled_gauge(base: str) -> float:
    # Sockets of an earlier test may still be unwinding; a baseline taken mid-way would be wrong.
    value = await websocket_gauge(base)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        again = await websocket_gauge(base)
        if again == value:
            break
        value = again
    return value


@pytest.fixture(autouse=True)
async def sockets_counted_down(api: str) -> AsyncIterator[None]:
    """Every test here must leave server A's websocket_connections gauge where it found it."""
    before = await settled_gauge(api)
    yield
    await assert_gauge_returns(api, before)


async def log_in(base: str, account: Account) -> str:
    result = (await gql(base, LOG_IN, {"e": account.email, "p": account.password}))["data"]["logIn"]
    token: str = result["accessToken"]
    return token


def expired_token(account: Account, settings: Settings) -> str:
    """The account's own live session, under a token whose lifetime has passed."""
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    principal = Principal(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]),
                          datetime.fromtimestamp(claims["sxp"], UTC))
    token, _ = JwtSigner(settings.secret_key, 60).issue(principal, datetime.now(UTC) - timedelta(hours=1))
    return token


# --- authenticated use ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_query_over_the_socket(api: str, protocol: str) -> None:
    account = await sign_up(api)
    async with open_socket(api, protocol, account.access_token) as socket:
        request = GraphQLRequest("{ me { id } }")
        try:
            result = await socket.transport.execute(request)
        except TransportQueryError as refused:
            # strawberry runs only subscriptions on the legacy protocol ("queries are not allowed"):
            # acceptable there, as long as the refusal carries a code and the socket stays usable.
            assert protocol == APOLLO, refused
            assert refused.errors, refused
            assert refused.errors[0]["extensions"]["code"] not in (None, "INTERNAL_SERVER_ERROR"), refused
        else:
            assert result.errors is None, result.errors
            assert result.data == {"me": {"id": account.id}}
        assert socket.close_code is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscriber_hears_an_update_made_on_the_other_server(api_servers: list[str], protocol: str) -> None:
    api, other_api = api_servers
    account = await sign_up(api)
    async with open_socket(api, protocol, account.access_token) as socket:
        subscription = Subscription(socket).start()
        try:
            event, names = await update_until_heard(other_api, account.access_token, subscription)
        finally:
            await subscription.stop()
    assert event["errors"] is None, event
    changed = event["data"]["myEvents"]
    assert changed["__typename"] == "ProfileChanged"
    me = changed["me"]
    assert me["id"] == account.id and me["displayName"] in names
    # The event carries one coherent state, read after the write, not a mix of two updates.
    assert me["bio"] == f"bio of {me['displayName']}"
    assert [t["slug"] for t in me["interestTags"]] == ["board-games", "tea"]
    assert me["discovery"] == {"maxDistanceKm": 42}


# --- refused connections -------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["no-token", "garbage-token", "expired-token", "not-bearer"])
async def test_bad_token_at_init_is_refused(api: str, settings: Settings, protocol: str, kind: str) -> None:
    account = await sign_up(api)
    payloads: dict[str, dict[str, Any]] = {
        "no-token": {},
        "garbage-token": {"Authorization": "Bearer garbage"},
        "expired-token": {"Authorization": f"Bearer {expired_token(account, settings)}"},
        "not-bearer": {"Authorization": 42},
    }
    payload = payloads[kind]
    transport = WebsocketsTransport(url=ws_url(api), subprotocols=[protocol], init_payload=payload,
                                    connect_timeout=5, ack_timeout=5, close_timeout=2)
    started = time.monotonic()
    with pytest.raises(TransportError) as refused:  # no ack: connect() itself fails
        await transport.connect()
    assert time.monotonic() - started < 4, "refused by the ack timeout, not by the server"
    if protocol == APOLLO:
        # connection_error carries the reason; the server then closes the socket.
        assert "UNAUTHENTICATED" in str(refused.value), refused.value
        if kind == "expired-token":
            assert "TOKEN_EXPIRED" in str(refused.value), refused.value
    else:
        closed = refused.value.__cause__
        assert isinstance(closed, websockets.ConnectionClosed), refused.value
        assert closed.rcvd is not None and closed.rcvd.code in REFUSED, closed
    await transport.close()


async def raw_exchange(base: str, protocol: str, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                                         int | None]:
    """Sends messages by hand, then reads everything until the server closes; (received, close code)."""
    received: list[dict[str, Any]] = []
    async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
        for message in messages:
            with suppress(websockets.ConnectionClosed):  # the server may hang up mid-sequence
                await ws.send(json.dumps(message))
        try:
            async with asyncio.timeout(5):
                async for raw in ws:
                    received.append(json.loads(raw))
        except websockets.ConnectionClosed:  # any code but 1000/1001 ends the loop this way
            pass
        except TimeoutError:
            pytest.fail(f"the server kept the socket open; received {received}")
        return received, ws.close_code


def operation_message(protocol: str, op_id: str, query: str) -> dict[str, Any]:
    kind = "start" if protocol == APOLLO else "subscribe"
    return {"id": op_id, "type": kind, "payload": {"query": query}}


def sign_up_document(email: str) -> str:
    # The visible side effect that needs no token: if anything ran, this account exists.
    return ('mutation { signUp(input: {email: ' + json.dumps(email) + ', password: "a long enough password", '
            'displayName: "Bypass", birthDate: "1990-01-01", gender: MAN}) { __typename } }')


async def assert_not_registered(base: str, email: str) -> None:
    result = (await gql(base, LOG_IN, {"e": email, "p": "a long enough password"}))["data"]["logIn"]
    assert result == {"code": "INVALID_CREDENTIALS"}, result


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_operation_before_connection_init_is_refused(api: str, protocol: str) -> None:
    email = f"bypass-{uuid.uuid4().hex[:12]}@example.test"
    received, code = await raw_exchange(api, protocol, [
        operation_message(protocol, "1", "{ interestTags { slug } }"),
        operation_message(protocol, "2", sign_up_document(email)),
        operation_message(protocol, "3", "subscription { myEvents { __typename } }"),
    ])
    assert code == CLOSE_SESSION_ENDED
    assert received == [], received  # not one data/next/error/ack frame
    await assert_not_registered(api, email)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("token", ["garbage", "missing"])
async def test_operation_after_refused_connection_init_does_not_run(api: str, protocol: str, token: str) -> None:
    email = f"bypass-{uuid.uuid4().hex[:12]}@example.test"
    init: dict[str, Any] = {"type": "connection_init", "payload": {}}
    if token == "garbage":
        init["payload"] = {"Authorization": "Bearer garbage"}
    # Sent back to back: the operations are already on the wire when the init is refused.
    received, code = await raw_exchange(api, protocol, [
        init,
        operation_message(protocol, "1", "{ interestTags { slug } }"),
        operation_message(protocol, "2", sign_up_document(email)),
        operation_message(protocol, "3", "subscription { myEvents { __typename } }"),
    ])
    kinds = [message.get("type") for message in received]
    if protocol == APOLLO:
        assert kinds == ["connection_error"], received
        assert received[0]["payload"]["code"] == "UNAUTHENTICATED"
    else:
        assert kinds == [], received
        assert code in REFUSED, code
    assert code is not None  # closed by the server, not left hanging
    await assert_not_registered(api, email)


# --- sockets close when their session ends -------------------------------------------------------

async def wait_all_closed(sockets: list[Socket], started: float) -> list[float]:
    ended = await asyncio.gather(*(socket.closed_within(CLOSE_LIMIT) for socket in sockets))
    return [at - started for at in ended]


async def test_log_out_everywhere_closes_sockets_on_both_protocols(api_servers: list[str]) -> None:
    api, other_api = api_servers
    account = await sign_up(api)
    second_session = await log_in(api, account)
    gauge = await websocket_gauge(api)
    async with (
        open_socket(api, APOLLO, account.access_token) as legacy,
        open_socket(api, TRANSPORT_WS, account.access_token) as modern,
        open_socket(api, TRANSPORT_WS, second_session) as other_session,
    ):
        sockets = [legacy, modern, other_session]
        subscriptions = [Subscription(socket).start() for socket in sockets]
        assert await websocket_gauge(api) == gauge + 3
        started = time.monotonic()
        await gql(other_api, "mutation { logOutEverywhere }", token=account.access_token)
        delays = await wait_all_closed(sockets, started)
        assert [socket.close_code for socket in sockets] == [CLOSE_SESSION_ENDED] * 3
        assert max(delays) < CLOSE_LIMIT, delays
        for subscription in subscriptions:
            # The subscription ended with its socket instead of hanging on.
            await subscription.ended(2)
            assert isinstance(subscription.error, TransportError)
    await assert_gauge_returns(api, gauge)
    print(f"logOutEverywhere closed sockets after {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_log_out_closes_only_that_sessions_socket(api_servers: list[str], protocol: str) -> None:
    api, other_api = api_servers
    account = await sign_up(api)
    second_session = await log_in(api, account)
    async with (
        open_socket(api, protocol, account.access_token) as first,
        open_socket(api, protocol, second_session) as second,
    ):
        started = time.monotonic()
        await gql(other_api, "mutation { logOut }", token=account.access_token)
        (delay,) = await wait_all_closed([first], started)
        assert first.close_code == CLOSE_SESSION_ENDED and delay < CLOSE_LIMIT
        # Give a wrongly broad close the same time to happen before judging the other socket.
        await asyncio.sleep(min(max(delay * 3, 0.2), 1))
        assert second.close_code is None
        subscription = Subscription(second).start()
        try:
            event, _ = await update_until_heard(other_api, second_session, subscription)
        finally:
            await subscription.stop()
        assert event["data"]["myEvents"]["me"]["id"] == account.id
        assert second.close_code is None
    print(f"logOut closed its socket after {delay * 1000:.0f} ms")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_delete_account_closes_sockets(api_servers: list[str], protocol: str) -> None:
    api, other_api = api_servers
    account = await sign_up(api)
    second_session = await log_in(api, account)
    async with (
        open_socket(api, protocol, account.access_token) as first,
        open_socket(api, protocol, second_session) as second,
    ):
        subscription = Subscription(first).start()
        started = time.monotonic()
        done = await gql(other_api, "mutation($p: String!) { deleteAccount(password: $p) { __typename } }",
                         {"p": account.password}, account.access_token)
        assert done["data"]["deleteAccount"]["__typename"] == "Done", done
        delays = await wait_all_closed([first, second], started)
        assert [first.close_code, second.close_code] == [CLOSE_SESSION_ENDED] * 2
        assert max(delays) < CLOSE_LIMIT, delays
        await subscription.stop()
    print(f"deleteAccount closed sockets after {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("frame", [
    [1, 2], "just a string", {"id": "1"}, {"type": 5}, {"type": "subscribe", "id": "1", "payload": None},
    {"type": "subscribe", "id": 5, "payload": {"query": "{ __typename }"}},
    {"type": "subscribe", "payload": {"query": "{ __typename }"}}, {"type": "start", "id": "1", "payload": []},
])
async def test_malformed_frames_close_with_4400(api: str, protocol: str, frame: object) -> None:
    account = await sign_up(api)
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {account.access_token}"}}
    async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps(frame))
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert ws.close_code == 4400, (frame, ws.close_code, ws.close_reason)


async def test_legacy_refusal_says_why_and_closes_with_4401(api: str, settings: Settings) -> None:
    account = await sign_up(api)
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {expired_token(account, settings)}"}}
    received, code = await raw_exchange(api, APOLLO, [init])
    assert received[0]["type"] == "connection_error", received
    assert received[0]["payload"]["reason"] == "TOKEN_EXPIRED" and "refresh" in received[0]["payload"]["message"]
    assert code == 4401


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_surrogate_or_nan_in_an_operation_is_refused_as_over_http(api: str, protocol: str) -> None:
    account = await sign_up(api)
    start = "start" if protocol == APOLLO else "subscribe"
    query = "subscription($c: ID!) { chatEvents(chatId: $c) { __typename } }"
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {account.access_token}"}}
    async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"

        async def answer_to(operation_id: str) -> dict[str, Any]:
            async with asyncio.timeout(5):
                while True:
                    frame: dict[str, Any] = json.loads(await ws.recv())
                    if frame.get("id") == operation_id:
                        return frame
                    assert frame["type"] == "ka", frame  # nothing else may come meanwhile

        # json.dumps keeps the surrogate as a \ud800 escape: valid JSON, not valid UTF-8.
        def operation(operation_id: str, chat_id: object) -> dict[str, Any]:
            return {"type": start, "id": operation_id, "payload": {"query": query, "variables": {"c": chat_id}}}

        await ws.send(json.dumps(operation("s", "x\ud800")))
        refused = await answer_to("s")
        errors = refused["payload"] if isinstance(refused["payload"], list) else [refused["payload"]]
        assert refused["type"] == "error" and errors[0]["extensions"]["code"] == "BAD_USER_INPUT", refused

        # NaN is not JSON: graphql-transport-ws closes on text that is not JSON, the legacy protocol skips it.
        await ws.send(json.dumps(operation("n", float("nan"))))  # Python writes the NaN literal
        if protocol == TRANSPORT_WS:
            with pytest.raises(websockets.ConnectionClosed):
                await answer_to("n")
            assert ws.close_code == 4400, (ws.close_code, ws.close_reason)
            return
        await ws.send(json.dumps(operation("p", "nope")))
        assert (await answer_to("p"))["type"] in ("data", "error")  # "n" never answered, the socket lives on


async def test_a_second_connection_init_on_the_legacy_protocol_is_ignored(api: str) -> None:
    # Taken again, it would sign in twice and start a second keep-alive task that outlives the socket.
    account = await sign_up(api)
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {account.access_token}"}}
    query = "subscription($c: ID!) { chatEvents(chatId: $c) { __typename } }"
    async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol(APOLLO)]) as ws:
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps(init))
        await ws.send(json.dumps({"type": "start", "id": "p", "payload": {"query": query, "variables": {"c": "x"}}}))
        async with asyncio.timeout(5):
            while (frame := json.loads(await ws.recv()))["type"] == "ka":
                pass
        assert frame.get("id") == "p", frame  # no second connection_ack came first
