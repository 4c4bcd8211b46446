import asyncio
import json
import time
from pathlib import Path

import websockets

from infra.settings import Settings
from tests.e2e.conftest import running_server, sign_up, ws_url
from tests.private_redis import PrivateRedis


async def test_sockets_close_with_try_again_when_redis_goes_away(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Without pub/sub a socket would not hear of revocations or events: it must close, not go deaf.
    with running_server(settings, tmp_path, REDIS_URL=private_redis.url) as base:
        account = await sign_up(base)
        protocol = websockets.Subprotocol("graphql-transport-ws")
        async with websockets.connect(ws_url(base), subprotocols=[protocol]) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {account.access_token}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"type": "subscribe", "id": "1",
                                      "payload": {"query": "subscription { myEvents { __typename } }"}}))
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
