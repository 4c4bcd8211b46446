"""A GraphQL-over-WebSocket client in a few dozen lines, for load and for misbehaving on purpose.

Real client libraries cost tens of KiB and a task or two per socket, and will not stop answering
pings or reset a connection; this one is a bare asyncio protocol, so a process can hold thousands.
"""
import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class RawSocket(asyncio.Protocol):
    def __init__(self, on_message: Callable[["RawSocket", dict[str, Any]], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.protocol = ""
        self.on_message = on_message
        self.messages: asyncio.Queue[dict[str, Any]] | None = None if on_message else asyncio.Queue()
        self.silent = False
        self.close_code: int | None = None
        self._buffer = bytearray()
        self._upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            del self._buffer[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self._upgraded.set_exception(ConnectionError(head.decode(errors="replace")))
                return
            self._upgraded.set_result(None)
        while (frame := self._next_frame()) is not None:
            opcode, payload = frame
            if opcode == TEXT:
                message = json.loads(payload)
                if self.on_message is not None:
                    self.on_message(self, message)
                elif self.messages is not None:
                    self.messages.put_nowait(message)
            elif opcode == PING and not self.silent:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def _next_frame(self) -> tuple[int, bytes] | None:
        # Server frames are never masked, and the server sends no fragments of its own.
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, start = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = struct.unpack_from("!Q", buf, 2)[0], 10
        if len(buf) < start + length:
            return None
        opcode, payload = buf[0] & 0x0F, bytes(buf[start:start + length])
        del buf[:start + length]
        return opcode, payload

    def _send(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        assert self.transport is not None
        self.transport.write(header + b"\0\0\0\0" + payload)  # a zero mask leaves the payload as it is

    def send_json(self, message: dict[str, Any]) -> None:
        self._send(TEXT, json.dumps(message).encode())

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        assert self.messages is not None
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout)
            if message.get("type") not in ("ka", "ping", "pong"):
                return message

    async def init(self, token: str, timeout: float = 10) -> None:
        self.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        if self.messages is not None:
            ack = await self.next_message(timeout)
            if ack.get("type") != "connection_ack":
                raise ConnectionError(f"connection_init refused: {ack}")

    def subscribe(self, operation_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        self.send_json({"type": kind, "id": operation_id, "payload": {"query": query, "variables": variables or {}}})

    def go_silent(self) -> None:
        """Stops reading and answering, as a phone that lost its network does; the socket stays open."""
        self.silent = True
        if self.transport is not None:
            self.transport.pause_reading()

    def reset(self) -> None:
        """Drops the connection with a TCP reset: no close frame, no FIN."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int, protocol: str, *, path: str = "/graphql",
                  on_message: Callable[[RawSocket, dict[str, Any]], None] | None = None,
                  timeout: float = 10) -> RawSocket:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(loop.create_connection(lambda: RawSocket(on_message), host, port), timeout)
    client.protocol = protocol
    key = base64.b64encode(os.urandom(16)).decode()
    assert client.transport is not None
    client.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        .encode())
    try:
        await asyncio.wait_for(client._upgraded, timeout)
    except BaseException:
        client.abort()
        raise
    return client
