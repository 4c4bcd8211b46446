"""What the chat tests share: worker processes, two matched people, and a bare GraphQL-over-WebSocket
client that speaks both subprotocols and can drop its connection at any moment."""
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import Account, gql, sign_up, ws_url

TRANSPORT_WS, LEGACY_WS = "graphql-transport-ws", "graphql-ws"
SEND = """mutation($chat: ID!, $cmid: String!, $text: String!) {
  sendMessage(chatId: $chat, clientMessageId: $cmid, text: $text) { __typename
    ... on Message { id chatId seq senderId fromMe clientMessageId text sentAt }
    ... on Error { code message } ... on InputError { field } } }"""
CHAT_EVENTS = """subscription($chat: ID!, $after: Int) { chatEvents(chatId: $chat, afterSeq: $after) { __typename
  ... on MessageSent { message { id seq senderId fromMe text } } ... on ReadReceipt { chatId userId upToSeq }
  ... on Typing { chatId userId expiresInSeconds } ... on ChatClosed { chatId } } }"""
MATCHES = "query { matches { edges { node { id chatId person { id } } } } }"
LIKE = "mutation($id: ID!) { like(userId: $id) { __typename } }"


@contextmanager
def worker(settings: Settings, name: str, log_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", name],
                                env={**os.environ, **settings_env(settings), **env}, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def matched_pair(base: str) -> tuple[Account, Account, str]:
    """Two new people who liked each other, and their chat's id once the match is written."""
    ann, bob = await sign_up(base), await sign_up(base)
    await gql(base, LIKE, {"id": bob.id}, ann.access_token)
    await gql(base, LIKE, {"id": ann.id}, bob.access_token)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        edges = (await gql(base, MATCHES, {}, ann.access_token))["data"]["matches"]["edges"]
        if edges:
            assert edges[0]["node"]["chatId"] == edges[0]["node"]["id"]
            return ann, bob, edges[0]["node"]["chatId"]
        await asyncio.sleep(0.05)
    raise AssertionError("the match was not written in time")


async def send(base: str, account: Account, chat_id: str, text: str, cmid: str | None = None) -> dict[str, Any]:
    variables = {"chat": chat_id, "cmid": cmid or uuid.uuid4().hex, "text": text}
    body = await gql(base, SEND, variables, account.access_token)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["sendMessage"]
    return result


class Socket:
    """One GraphQL WebSocket; frames of each operation are queued by id."""

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws, self.protocol = ws, protocol
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                message = json.loads(frame)
                if "id" in message:
                    await self._queue(message["id"]).put(message)
        except websockets.ConnectionClosed:
            pass
        for queue in self._queues.values():
            queue.put_nowait({"type": "closed"})

    def _queue(self, op_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self._queues.setdefault(op_id, asyncio.Queue())

    async def start(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        self._queue(op_id)
        await self.ws.send(json.dumps({"type": kind, "id": op_id,
                                       "payload": {"query": query, "variables": variables or {}}}))

    async def frame(self, op_id: str, timeout: float = 10) -> dict[str, Any]:
        """The next frame of the operation: next/data, error, complete, or {"type": "closed"}."""
        async with asyncio.timeout(timeout):
            return await self._queue(op_id).get()

    async def result(self, op_id: str, timeout: float = 10) -> dict[str, Any]:
        frame = await self.frame(op_id, timeout)
        assert frame["type"] in ("next", "data"), frame
        payload: dict[str, Any] = frame["payload"]
        return payload

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@asynccontextmanager
async def open_socket(base: str, token: str, protocol: str = TRANSPORT_WS) -> AsyncIterator[Socket]:
    async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol(protocol)]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
        while True:
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if ack["type"] != "ka":  # the legacy protocol may send keep-alives first
                break
        assert ack["type"] == "connection_ack", ack
        socket = Socket(ws, protocol)
        try:
            yield socket
        finally:
            socket._reader.cancel()


async def subscribed(socket: Socket, op_id: str, chat_id: str, after: int | None) -> None:
    await socket.start(op_id, CHAT_EVENTS, {"chat": chat_id, "after": after})
    # The protocols acknowledge no subscription: give the server a moment to subscribe to the channel.
    await asyncio.sleep(0.3)
