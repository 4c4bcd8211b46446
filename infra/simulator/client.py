"""The two transports a person's app speaks: GraphQL over HTTP, and graphql-transport-ws."""

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import certifi
import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from infra.simulator.ledger import Ledger

CONNECT_ATTEMPTS = 6


class ApiError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def forwarded(address: str | None) -> dict[str, str]:
    # What a load balancer in front of the API adds; a server believes it only from TRUSTED_PROXIES,
    # and ignores it from anyone else.
    return {"x-forwarded-for": address} if address else {}


class Api:
    def __init__(self, url: str, ledger: Ledger) -> None:
        self._url = url
        # Built once: each client would otherwise load the CA bundle again.
        self._tls = ssl.create_default_context(cafile=certifi.where())
        self.http = self._client()
        # A client for each person, as each phone has its own connection. One pool shared by
        # hundreds scans all its connections for every request: this process, not the server,
        # became the bottleneck, and its delay was counted as the server's latency.
        self._own: dict[str, httpx.AsyncClient] = {}
        self.ledger = ledger

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self._url, timeout=30, verify=self._tls,
                                 limits=httpx.Limits(max_connections=4, max_keepalive_connections=2))

    def _for(self, address: str | None) -> httpx.AsyncClient:
        if address is None:
            return self.http
        client = self._own.get(address)
        if client is None:
            client = self._own[address] = self._client()
        return client

    async def aclose(self) -> None:
        for client in [self.http, *self._own.values()]:
            await client.aclose()

    async def call(self, name: str, query: str, variables: dict[str, Any], token: str | None = None,
                   address: str | None = None) -> Any:
        """The root field's value; a top-level error raises, a union error member is returned."""
        headers = forwarded(address)
        if token:
            headers["authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        try:
            response = await self._for(address).post("/graphql", json={"query": query, "variables": variables},
                                                      headers=headers)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.ledger.error(f"transport:{type(exc).__name__}", name, str(exc))
            raise ApiError("TRANSPORT") from exc
        self.ledger.timed(name, time.perf_counter() - started)
        self.ledger.operations += 1
        if body.get("errors"):
            first = body["errors"][0]
            code = str(first.get("extensions", {}).get("code", f"HTTP_{response.status_code}"))
            self.ledger.error(code, name, str(first.get("message")))
            raise ApiError(code)
        result = next(iter(body["data"].values()))
        if isinstance(result, dict) and "code" in result:
            self.ledger.error(result["code"], name, str(result.get("message", "")))
        return result


class Live:
    """One graphql-transport-ws connection; each subscription's payloads go to its handler."""

    def __init__(self, ws: ClientConnection, ledger: Ledger) -> None:
        self.ws, self.ledger = ws, ledger
        self.subscriptions: dict[str, tuple[str, Callable[[dict[str, Any]], None], Callable[[], None]]] = {}
        self.closing = False
        self.lost: Callable[[], None] | None = None  # runs when the server, not we, ended the socket
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str, ledger: Ledger, gate: asyncio.Semaphore,
                   address: str | None = None) -> "Live":
        for attempt in range(CONNECT_ATTEMPTS):
            async with gate:
                started = time.perf_counter()
                try:
                    # No pings of our own: the server pings every socket (and this side answers);
                    # ours would time out whenever this busy process, not the server, falls behind.
                    ws = await websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
                                                  additional_headers=forwarded(address), ping_interval=None)
                except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                    ledger.error(f"transport:{type(exc).__name__}", "websocket connect", str(exc))
                    raise ApiError("TRANSPORT") from exc
                try:
                    await ws.send(json.dumps({"type": "connection_init",
                                              "payload": {"Authorization": f"Bearer {token}"}}))
                    ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
                except TimeoutError as exc:
                    await ws.close()
                    ledger.error("transport:TimeoutError", "connection_init", "no connection_ack in 10 s")
                    raise ApiError("TRANSPORT") from exc
                except websockets.ConnectionClosed as closed:
                    # 1012: the server could not check the session just now; it asks for a reconnect.
                    code = closed.rcvd.code if closed.rcvd else 1006
                    ledger.error(f"close {code}", "connection_init", closed.rcvd.reason if closed.rcvd else "")
                    if code != 1012:
                        raise ApiError(f"ws_init_close:{code}") from closed
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
            if ack.get("type") != "connection_ack":
                await ws.close()
                ledger.error(str(ack.get("type")), "connection_init")
                raise ApiError("ws_init_refused")
            ledger.timed("websocket connect", time.perf_counter() - started)
            return cls(ws, ledger)
        raise ApiError("ws_init_close:1012")

    async def subscribe(self, name: str, query: str, variables: dict[str, Any],
                        handler: Callable[[dict[str, Any]], None], ended: Callable[[], None]) -> None:
        """handler gets each event's data; ended runs when the server ends the subscription."""
        op_id = uuid.uuid4().hex
        self.subscriptions[op_id] = (name, handler, ended)
        await self.ws.send(json.dumps({"type": "subscribe", "id": op_id,
                                       "payload": {"query": query, "variables": variables}}))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                kind, found = frame.get("type"), self.subscriptions.get(frame.get("id", ""))
                if kind == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
                elif found is None:
                    continue
                elif kind == "next":
                    for error in frame["payload"].get("errors") or ():
                        self.ledger.error(str(error.get("extensions", {}).get("code")), found[0],
                                          str(error.get("message")))
                    if frame["payload"].get("data"):
                        found[1](frame["payload"]["data"])
                elif kind in ("error", "complete"):
                    for error in frame.get("payload") or ():
                        self.ledger.error(str(error.get("extensions", {}).get("code")), found[0],
                                          str(error.get("message")))
                    del self.subscriptions[frame["id"]]
                    found[2]()
        except websockets.ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code != 1000:
                self.ledger.error(f"close {closed.rcvd.code}", "websocket", closed.rcvd.reason)
        if not self.closing and self.lost is not None:
            self.lost()

    async def close(self) -> None:
        self.closing = True
        await self.ws.close()
        await self.reader
