import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from domain.ids import new_id
from infra.settings import Settings
from tests.e2e.chats import LEGACY_WS, SEND, TRANSPORT_WS, Socket, open_socket, send, subscribed, worker
from tests.e2e.conftest import Account, gql, running_server, sign_up
from tests.private_redis import PrivateRedis


async def _match(settings: Settings, ann: Account, bob: Account) -> str:
    # Written as the swipe writer would, so that no writer has to run against the private Redis.
    match_id, now = new_id(), datetime.now(UTC)
    low, high = sorted((ann.id, bob.id))
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("INSERT INTO matches (low_id, high_id, id, created_at, notified)"
                           " VALUES ($1, $2, $3, $4, true)", low, high, match_id, now)
        for user, other in ((ann.id, bob.id), (bob.id, ann.id)):
            await conn.execute("INSERT INTO user_matches (user_id, match_id, other_id, created_at)"
                               " VALUES ($1, $2, $3, $4)", user, match_id, other, now)
    finally:
        await conn.close()
    return str(match_id)


async def test_numbering_resumes_above_every_acknowledged_number_after_redis_loses_its_data(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    with running_server(settings, tmp_path, REDIS_URL=private_redis.url) as base:
        ann, bob = await sign_up(base), await sign_up(base)
        chat = await _match(settings, ann, bob)
        before = [await send(base, (ann, bob)[i % 2], chat, f"before {i}") for i in range(5)]
        assert [m["seq"] for m in before] == [1, 2, 3, 4, 5]
        # The server runs without persistence: a restart is a Redis that lost everything.
        await private_redis.kill()
        await private_redis.start()
        after = None
        # Until the server's connections are back. Meanwhile sending (and the session check in front
        # of it, which reads Redis too) answers UNAVAILABLE.
        for _ in range(100):
            body = await gql(base, SEND, {"chat": chat, "cmid": "after-loss", "text": "after"}, ann.access_token)
            if "errors" not in body:
                after = body["data"]["sendMessage"]
                break
            assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
            await asyncio.sleep(0.1)
        assert after is not None
        assert after["seq"] > 5
        # Pooled connections from before the restart fail once each: UNAVAILABLE, and a retry helps.
        more = await asyncio.gather(*(_send_when_back(base, bob, chat, f"then {i}") for i in range(20)))
        assert sorted(m["seq"] for m in more) == list(range(after["seq"] + 1, after["seq"] + 21))


@contextmanager
def chat_stack(settings: Settings, tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two API processes and a chat pusher, all on the given Redis."""
    with ExitStack() as stack:
        servers = [stack.enter_context(running_server(settings, tmp_path, REDIS_URL=redis_url)) for _ in range(2)]
        stack.enter_context(worker(settings, "chat-pusher", tmp_path / "chat-pusher.log", REDIS_URL=redis_url))
        yield servers[0], servers[1]


async def _send_when_back(base: str, account: Account, chat: str, text: str) -> dict[str, Any]:
    cmid = uuid.uuid4().hex  # the same on every retry: a send that went through is not repeated
    for _ in range(150):
        body = await gql(base, SEND, {"chat": chat, "cmid": cmid, "text": text}, account.access_token)
        if "errors" not in body:
            result: dict[str, Any] = body["data"]["sendMessage"]
            return result
        assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
        await asyncio.sleep(0.1)
    raise AssertionError("sending did not come back")


async def _until_closed(socket: Socket, op_id: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await socket.frame(op_id, timeout=15)
        if frame["type"] == "closed":
            return frames
        frames.append(frame)


def _codes(frames: list[dict[str, Any]]) -> set[str]:
    return {e["extensions"]["code"] for f in frames if f["type"] in ("error", "next", "data")
            for e in (f["payload"] if f["type"] == "error" else f["payload"].get("errors") or [])}


def _seq(frame: dict[str, Any]) -> int | None:
    event = (frame["payload"].get("data") or {}).get("chatEvents") if frame["type"] in ("next", "data") else None
    return event["message"]["seq"] if event and event["__typename"] == "MessageSent" else None


async def _seqs_until(socket: Socket, op_id: str, last: int) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < last:
        seq = _seq(await socket.frame(op_id))
        if seq is not None:
            seqs.append(seq)
    return seqs


@asynccontextmanager
async def _reconnected(base: str, token: str, protocol: str) -> AsyncIterator[Socket]:
    """A socket opened as a client would: again after each refusal, until the server is back."""
    for _ in range(100):
        async with AsyncExitStack() as stack:
            try:
                socket = await stack.enter_async_context(open_socket(base, token, protocol))
            except (AssertionError, websockets.ConnectionClosed, OSError):
                await asyncio.sleep(0.1)
                continue
            yield socket
            return
    raise AssertionError("could not reconnect")


async def _follow(base: str, token: str, protocol: str, chat: str, after: int, last: int,
                  caught_up: Callable[[], Awaitable[None]] | None = None) -> list[int]:
    """What a client does: subscribes from its cursor and, after an UNAVAILABLE or a 1012, again
    from where it got to, until it holds `last`; caught_up runs once when it holds last - 1."""
    seqs: list[int] = []
    for _ in range(50):
        async with _reconnected(base, token, protocol) as socket:
            await subscribed(socket, "c", chat, seqs[-1] if seqs else after)
            while not seqs or seqs[-1] < last:
                frame = await socket.frame("c", timeout=20)
                if frame["type"] == "closed":
                    assert socket.ws.close_code == 1012, socket.ws.close_code
                    break
                if frame["type"] == "complete" or _codes([frame]):
                    assert _codes([frame]) <= {"UNAVAILABLE"}, frame
                    break
                seq = _seq(frame)
                if seq is not None:
                    seqs.append(seq)
                    if seq == last - 1 and caught_up is not None:
                        await caught_up()
            else:
                return seqs
        await asyncio.sleep(0.2)
    raise AssertionError(f"never caught up: {seqs}")


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_a_subscriber_closed_by_a_redis_crash_resumes_from_its_cursor(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path, protocol: str,
) -> None:
    with chat_stack(settings, tmp_path, private_redis.url) as (listening, sending):
        ann, bob = await sign_up(sending), await sign_up(sending)
        chat = await _match(settings, ann, bob)
        async with open_socket(listening, bob.access_token, protocol) as socket:
            await subscribed(socket, "c", chat, 0)
            for i in range(3):
                await send(sending, ann, chat, f"before {i}")
            assert await _seqs_until(socket, "c", 3) == [1, 2, 3]
            await private_redis.kill()
            # Never open and deaf: closed, with the code that says "reconnect at once".
            frames = await _until_closed(socket, "c")
            assert socket.ws.close_code == 1012, (socket.ws.close_code, frames)
            assert _codes(frames) <= {"UNAVAILABLE"}, frames
        await private_redis.start()  # empty: the crash lost everything Redis held
        missed = [(await _send_when_back(sending, ann, chat, f"while away {i}"))["seq"] for i in range(3)]
        assert missed[0] > 3 and missed == list(range(missed[0], missed[0] + 3))  # never back, no gaps

        async def send_live() -> None:  # heard live: the pusher is back as well
            await _send_when_back(sending, ann, chat, "live again")

        seqs = await _follow(listening, bob.access_token, protocol, chat, 3, missed[-1] + 1, send_live)
        assert seqs == [*missed, missed[-1] + 1]


async def test_a_subscriber_misses_nothing_while_redis_stalls(
    settings: Settings, migrated: None, private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    with chat_stack(settings, tmp_path, private_redis.url) as (listening, sending):
        ann, bob = await sign_up(sending), await sign_up(sending)
        chat = await _match(settings, ann, bob)
        got: list[int] = []
        async with open_socket(listening, bob.access_token) as socket:
            await subscribed(socket, "c", chat, 0)
            await send(sending, ann, chat, "before")
            got += await _seqs_until(socket, "c", 1)
            private_redis.signal(signal.SIGSTOP)
            stalled = asyncio.create_task(asyncio.wait_for(
                asyncio.gather(*(_send_when_back(sending, ann, chat, f"stalled {i}") for i in range(3))), 60))
            await asyncio.sleep(4)  # longer than the pub/sub connection may stay silent
            private_redis.signal(signal.SIGCONT)
            assert sorted(m["seq"] for m in await stalled) == [2, 3, 4]
            # Either still subscribed and hearing the rest, or told to come back (1012, UNAVAILABLE).
            while got[-1] < 4:
                frame = await socket.frame("c", timeout=15)
                if frame["type"] == "closed" or frame["type"] == "complete" or _codes([frame]):
                    assert socket.ws.close_code in (None, 1012) and _codes([frame]) <= {"UNAVAILABLE"}, frame
                    break
                seq = _seq(frame)
                if seq is not None:
                    got.append(seq)
        if got[-1] < 4:
            got += await _follow(listening, bob.access_token, TRANSPORT_WS, chat, got[-1], 4)
        assert got == [1, 2, 3, 4]
