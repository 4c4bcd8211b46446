import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import websockets
from websockets.asyncio.client import ClientConnection

from infra.broadcast import SILENCE_LIMIT
from infra.settings import Settings
from tests.e2e.conftest import gql, running_server, sign_up, ws_url
from tests.private_redis import PrivateRedis


@contextlib.asynccontextmanager
async def listening_to_my_events(base: str, token: str) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws socket, signed in, with myEvents subscribed."""
    protocol = websockets.Subprotocol("graphql-transport-ws")
    async with websockets.connect(ws_url(base), subprotocols=[protocol]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "subscribe", "id": "1",
                                  "payload": {"query": "subscription { myEvents { __typename } }"}}))
        yield ws


async def test_sockets_close_with_try_again_when_redis_goes_away(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Without pub/sub a socket would not hear of revocations or events: it must close, not go deaf.
    with running_server(settings, tmp_path, REDIS_URL=private_redis.url) as base:
        account = await sign_up(base)
        async with listening_to_my_events(base, account.access_token) as ws:
            await asyncio.sleep(0.3)
            await private_redis.kill()
            started = time.monotonic()
            frames = []
            try:
                async with asyncio.timeout(15):
                    async for frame in ws:
                        frames.append(json.loads(frame))
            except websockets.ConnectionClosed:
                pass
            assert ws.close_code == 1012, (ws.close_code, frames)
            assert time.monotonic() - started < 10
            # The subscription said why before the socket closed, with a code a client can act on.
            codes = [e["extensions"]["code"] for f in frames if f["type"] in ("error", "next")
                     for e in (f["payload"] if f["type"] == "error" else f["payload"].get("errors", []))]
            assert set(codes) <= {"UNAVAILABLE"}, frames


async def test_signed_in_requests_answer_unavailable_while_redis_is_away(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # The session check reads Redis first: without it the answer is "try again", not a server fault.
    with running_server(settings, tmp_path, REDIS_URL=private_redis.url) as base:
        account = await sign_up(base)
        me, profile = "query { me { id } }", 'mutation { updateProfile(input: {bio: "hi"}) { __typename } }'
        assert (await gql(base, me, {}, account.access_token))["data"]["me"]["id"] == account.id
        await private_redis.kill()
        for document in (me, profile):
            body = await gql(base, document, {}, account.access_token)
            assert [e["extensions"]["code"] for e in body.get("errors", [])] == ["UNAVAILABLE"], body
        for subprotocol in ("graphql-transport-ws", "graphql-ws"):
            async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol(subprotocol)]) as ws:
                await ws.send(json.dumps({"type": "connection_init",
                                          "payload": {"Authorization": f"Bearer {account.access_token}"}}))
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        async for frame in ws:
                            assert json.loads(frame)["type"] != "connection_ack", frame
            assert ws.close_code == 1012, (subprotocol, ws.close_code)  # reconnect later, same token
        await private_redis.start()
        for _ in range(100):  # until the server's connections are back
            body = await gql(base, me, {}, account.access_token)
            if "errors" not in body:
                break
            assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
            await asyncio.sleep(0.1)
        assert body["data"]["me"]["id"] == account.id


async def test_a_stalled_server_keeps_its_subscribers(settings: Settings, migrated: None, tmp_path: Path) -> None:
    # A process that could not run for longer than Redis may stay silent (a blocking call, a busy
    # loop, a pause) has not lost Redis, which answered meanwhile: its sockets stay open and hear.
    with running_server(settings, tmp_path) as base:
        port = base.rsplit(":", 1)[1]
        server = next(p for p in psutil.Process().children(recursive=True) if port in p.cmdline())
        account = await sign_up(base)
        async with listening_to_my_events(base, account.access_token) as ws:
            await asyncio.sleep(2)  # subscribed, and a few PINGs answered
            server.suspend()
            try:
                await asyncio.sleep(SILENCE_LIMIT + 1)
            finally:
                server.resume()
            await asyncio.sleep(2)  # the reader's turns after the stall
            body = await gql(base, 'mutation { updateProfile(input: {bio: "still here"}) { __typename } }', {},
                             account.access_token)
            assert body["data"]["updateProfile"]["__typename"] == "Me", body
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "next", frame
            assert frame["payload"]["data"]["myEvents"]["__typename"] == "ProfileChanged", frame
