"""uvicorn's sans-I/O WebSocket protocol, lighter per connection.

An API process holds thousands of mostly idle sockets, and what each keeps for its whole life adds
up: uvicorn's receive queue is an asyncio.Queue (four deques, each a block of 64 slots even when
empty) and its write gate an asyncio.Event (one more), and the handshake's request and response
headers stay referenced after the handshake (the request by the parser's suspended frame). Here
the queue and the gate are a list and a future or two, and the headers are dropped once sent; the
protocol itself (pings with their timeout, limits, close codes) is uvicorn's, unchanged.
"""
import asyncio
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request


class _Inbox:
    """What uvicorn uses of asyncio.Queue, for its one reader (the application's receive())."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []  # a message or two at most: reading pauses meanwhile
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Gate:
    """What uvicorn uses of asyncio.Event: open while the transport takes writes."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    def is_set(self) -> bool:
        return self._open

    async def wait(self) -> bool:
        if not self._open:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Gate()  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The scope has its own copy of the headers by now; the parser keeps this request alive.
        if self.response.status_code == 101:
            event.headers.clear()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self.response.headers.clear()
