"""Chat: send-to-receive latency across two API processes, and memory per idle subscribed socket.

The latency of sendMessage (sent on one API process, received through chatEvents on another, by way
of the chat stream and the pusher) is compared with a bare strawberry + broadcaster echo measured
in the same run on the same machine: a mutation that publishes, a subscription that receives, two
uvicorn processes, the same Redis. Both paths send their mutations over graphql-transport-ws, so the
load generator stays light. The last line of stdout is JSON.

    .venv/bin/python bench/chat.py [--seconds 8] [--idle 10000] [--chats 50]
"""

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

# tests/ is not an installed package, and the script may be started from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil
import uvloop

from domain.ids import new_id
from domain.model import Principal
from infra.db import migrate, open_pool
from infra.devstack import free_port
from infra.security import JwtSigner
from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import running_server
from tests.e2e.raw_ws import TRANSPORT_WS, RawSocket, connect
from tests.factories import make_users
from tests.services import test_services

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"ratio_p50_200": 2.0, "rss_kib_per_ws": 30.0}
RATES = (200, 1000)
WARMUP_S = 2.0
DRAIN_S = 5.0  # how long a message may still arrive after the last send before it counts as lost
WARM_SOCKETS = 200  # opened and closed before the idle measurement, on top of --idle
CONNECTS_IN_FLIGHT = 20  # per client process: each connection_init takes a Redis connection of a pool of 100
SEND = ("mutation($c: ID!, $m: String!, $t: String!) { sendMessage(chatId: $c, clientMessageId: $m, text: $t)"
        " { __typename ... on Error { code message } } }")
CHAT_EVENTS = ("subscription($c: ID!) { chatEvents(chatId: $c) { __typename"
               " ... on MessageSent { message { seq text } } } }")
MY_EVENTS = "subscription { myEvents { __typename } }"
BARE_SEND = "mutation($c: String!, $t: String!) { publish(channel: $c, text: $t) }"
BARE_ECHO = "subscription($c: String!) { echo(channel: $c) }"

log = logging.getLogger("bench")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout is kept for the figures


# -- the bare echo: strawberry + broadcaster, nothing of ours but the Redis backend fix ----------

def bare_app(redis_url: str) -> Any:
    import strawberry
    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute
    from strawberry.asgi import GraphQL

    from infra.broadcast import make_broadcast

    # Our broadcaster backend, not upstream's: with redis-py 8 upstream's delivers nothing.
    broadcast = make_broadcast(redis_url)

    @strawberry.type
    class Query:
        ok: bool = True

    @strawberry.type
    class Mutation:
        @strawberry.mutation
        async def publish(self, channel: str, text: str) -> bool:
            await broadcast.publish(channel, text)
            return True

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def echo(self, channel: str) -> AsyncIterator[str]:
            async with broadcast.subscribe(channel) as subscriber:
                async for event in subscriber:  # type: ignore[attr-defined]
                    yield event.message

    graphql: Any = GraphQL(strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    return Starlette(routes=[Route("/graphql", graphql), WebSocketRoute("/graphql", graphql)], lifespan=lifespan)


def serve_bare(port: int, redis_url: str) -> None:
    import uvicorn

    # As `newfriends serve` runs uvicorn, so that only the application differs.
    uvicorn.run(bare_app(redis_url), host="127.0.0.1", port=port, ws_ping_interval=20, ws_ping_timeout=20,
                ws_max_size=1_000_000, log_level="warning", access_log=False)


@contextmanager
def running(cmd: list[str], env: dict[str, str], log_path: Path, ready_url: str | None) -> Iterator[psutil.Process]:
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while ready_url is not None:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited early:\n{log_path.read_text()[-3000:]}")
            try:
                httpx.get(ready_url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} did not start:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.1)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def server_process(base: str) -> psutil.Process:
    port = base.rsplit(":", 1)[1]
    return next(p for p in psutil.Process().children() if port in p.cmdline())


# -- accounts and chats ---------------------------------------------------------------------------

async def make_accounts(settings: Settings, count: int) -> tuple[list[uuid.UUID], list[str]]:
    """Users with one session each and an access token for it, in bulk (signing in is not measured)."""
    signer = JwtSigner(settings.secret_key, 3 * 3600)
    now = datetime.now(UTC)
    expires = now + timedelta(days=1)
    async with open_pool(settings.database_url) as pool:
        sessions = [(user_id, new_id()) for user_id, _ in await make_users(pool, count)]
        await pool.copy_records_to_table(
            "sessions", columns=["user_id", "id", "refresh_hash", "created_at", "refreshed_at", "expires_at"],
            records=[(u, s, secrets.token_bytes(32), now, now, expires) for u, s in sessions],
        )
    return [u for u, _ in sessions], [signer.issue(Principal(u, s, expires), now)[0] for u, s in sessions]


async def make_chats(settings: Settings, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[uuid.UUID]:
    """A live match, and so a chat, for each pair, as the swipe writer would have left it."""
    now = datetime.now(UTC)
    ids = [new_id() for _ in pairs]
    async with open_pool(settings.database_url) as pool:
        await pool.copy_records_to_table(
            "matches", columns=["low_id", "high_id", "id", "created_at", "notified", "low_completed"],
            records=[(min(a, b), max(a, b), m, now, True, True) for (a, b), m in zip(pairs, ids, strict=True)],
        )
        await pool.copy_records_to_table(
            "user_matches", columns=["user_id", "match_id", "other_id", "created_at"],
            records=[row for (a, b), m in zip(pairs, ids, strict=True) for row in ((a, m, b, now), (b, m, a, now))],
        )
    return ids


# -- latency --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One way for message i to go from a sender socket on A to a subscriber socket on B."""

    send: Callable[[int], tuple[int, str, dict[str, Any]]]  # i -> (sender index, document, variables)
    received: Callable[[dict[str, Any]], int | None]  # a subscription payload -> i
    senders: list[str | None]  # tokens for A (None: no init payload needed)
    subscribers: list[tuple[str | None, str, dict[str, Any]]]  # token, document, variables on B


@dataclass(frozen=True)
class Latency:
    rate: int
    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    sender_cpu_s: float  # API process A during the measured window
    receiver_cpu_s: float
    other_cpu_s: float  # the pusher, when there is one
    errors: int


def host_port(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def open_sockets(base: str, tokens: list[str | None],
                       on_message: Callable[[RawSocket, dict[str, Any]], None]) -> list[RawSocket]:
    host, port = host_port(base)
    sockets = []
    for token in tokens:
        sock = await connect(host, port, TRANSPORT_WS, on_message=on_message)
        sock.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"} if token else {}})
        sockets.append(sock)
    return sockets


async def measure(route: Route, a: str, b: str, rate: int, seconds: float,
                  procs: tuple[psutil.Process, psutil.Process, psutil.Process | None]) -> Latency:
    sent_at: dict[int, float] = {}
    got_at: dict[int, float] = {}
    errors: list[Any] = []
    acked: set[RawSocket] = set()
    all_acked = asyncio.Event()
    expected_acks = len(route.senders) + len(route.subscribers)

    def ack(sock: RawSocket) -> None:
        acked.add(sock)
        if len(acked) == expected_acks:
            all_acked.set()

    def on_answer(sock: RawSocket, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connection_ack":
            ack(sock)
        elif kind == "next":
            data = message["payload"].get("data") or {}
            answer = next(iter(data.values()), None)
            if message["payload"].get("errors") or (isinstance(answer, dict) and "code" in answer):
                errors.append(message["payload"])
        elif kind == "error":
            errors.append(message)

    def on_event(sock: RawSocket, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connection_ack":
            ack(sock)
        elif kind == "next":
            i = route.received(message["payload"])
            if i is not None and i not in got_at:
                got_at[i] = time.monotonic()
        elif kind == "error":
            errors.append(message)

    senders = await open_sockets(a, route.senders, on_answer)
    subscribers = await open_sockets(b, [t for t, _, _ in route.subscribers], on_event)
    try:
        await asyncio.wait_for(all_acked.wait(), 30)
        for sock, (_, document, variables) in zip(subscribers, route.subscribers, strict=True):
            sock.subscribe("s", document, variables)
        # A subscription says nothing when it starts listening: wait until one message gets through.
        probe = -1
        while not any(i < 0 for i in got_at):
            sender, document, variables = route.send(probe)
            senders[sender].subscribe(f"p{probe}", document, variables)
            probe -= 1
            await asyncio.sleep(0.2)
            if probe < -100:
                raise RuntimeError(f"no message got through: {errors[:3]}")
        await asyncio.sleep(1)  # every subscriber has had its turn to subscribe
        start = time.monotonic()
        window = (start + WARMUP_S, start + WARMUP_S + seconds)
        cpu0: list[float] | None = None
        i = 0
        while (now := time.monotonic()) < window[1]:
            if cpu0 is None and now >= window[0]:
                cpu0 = [_cpu(p) for p in procs]
            due = int((now - start) * rate)
            while i < due:
                sender, document, variables = route.send(i)
                sent_at[i] = time.monotonic()
                senders[sender].subscribe(str(i), document, variables)
                i += 1
            await asyncio.sleep(0.001)
        cpu1 = [_cpu(p) for p in procs]
        assert cpu0 is not None
        drain_until = time.monotonic() + DRAIN_S
        measured = [j for j, t in sent_at.items() if window[0] <= t < window[1]]
        while time.monotonic() < drain_until:
            if all(j in got_at for j in measured):
                break
            await asyncio.sleep(0.05)
    finally:
        for sock in senders + subscribers:
            sock.abort()
    latencies = sorted(1000 * (got_at[j] - sent_at[j]) for j in measured if j in got_at)
    if not latencies:
        raise RuntimeError(f"nothing received; errors: {errors[:3]}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Latency(rate, len(measured), len(latencies), round(cuts[49], 3), round(cuts[98], 3),
                   cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2] if procs[2] else 0.0, len(errors))


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return float(times.user + times.system)


def bare_route(chats: int) -> Route:
    def send(i: int) -> tuple[int, str, dict[str, Any]]:
        return i % chats, BARE_SEND, {"c": f"bench:{i % chats}", "t": str(i)}

    def received(payload: dict[str, Any]) -> int | None:
        return int(payload["data"]["echo"])

    return Route(send, received, [None] * chats, [(None, BARE_ECHO, {"c": f"bench:{k}"}) for k in range(chats)])


def chat_route(chat_ids: list[uuid.UUID], sender_tokens: list[str], receiver_tokens: list[str]) -> Route:
    run = uuid.uuid4().hex[:8]  # clientMessageIds must be new in every phase

    def send(i: int) -> tuple[int, str, dict[str, Any]]:
        k = i % len(chat_ids)
        return k, SEND, {"c": str(chat_ids[k]), "m": f"{run}-{i}", "t": f"m{i}"}

    def received(payload: dict[str, Any]) -> int | None:
        event = (payload.get("data") or {}).get("chatEvents") or {}
        text = (event.get("message") or {}).get("text", "")
        return int(text[1:]) if text.startswith("m") else None

    return Route(send, received, list(sender_tokens),
                 [(t, CHAT_EVENTS, {"c": str(c)}) for t, c in zip(receiver_tokens, chat_ids, strict=True)])


# -- idle sockets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Idle:
    base: str
    subscriptions: list[tuple[str, str, dict[str, Any]]]  # token, document, variables


def _idle_main(idle: Idle, ready: "mp.Queue[tuple[int, int]]", done: MpEvent) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_hold_idle(idle, ready, done))


async def _hold_idle(idle: Idle, ready: "mp.Queue[tuple[int, int]]", done: MpEvent) -> None:
    host, port = host_port(idle.base)
    loop = asyncio.get_running_loop()
    sockets: list[RawSocket] = []
    acks: dict[RawSocket, asyncio.Future[bool]] = {}
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)

    def on_message(sock: RawSocket, message: dict[str, Any]) -> None:
        kind, ack = message.get("type"), acks.get(sock)
        if ack is not None and not ack.done() and kind in ("connection_ack", "error", "complete"):
            ack.set_result(kind == "connection_ack")
        elif kind in ("error", "complete"):
            log.error("an idle subscription ended: %s", message)

    async def open_one(token: str, document: str, variables: dict[str, Any]) -> bool:
        async with gate:
            try:
                sock = await connect(host, port, TRANSPORT_WS, on_message=on_message, timeout=30)
                acks[sock] = loop.create_future()
                sock.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
                if not await asyncio.wait_for(acks[sock], 30):
                    return False
            except (OSError, TimeoutError):
                return False
            sock.subscribe("1", document, variables)
            sockets.append(sock)
            return True

    results = await asyncio.gather(*(open_one(*s) for s in idle.subscriptions))
    ready.put((len(sockets), results.count(False)))
    await asyncio.to_thread(done.wait)
    for sock in sockets:
        sock.abort()


async def gauge(base: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{base}/metrics")).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def bench_idle(base: str, server: psutil.Process, subscriptions: list[tuple[str, str, dict[str, Any]]],
               clients: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # no forking of a process that holds threads and event loops

    def hold(share: list[tuple[str, str, dict[str, Any]]], parts: int) -> tuple[list[Any], MpEvent, int, int]:
        ready: mp.Queue[tuple[int, int]] = ctx.Queue()
        done = ctx.Event()
        procs = [ctx.Process(target=_idle_main, args=(Idle(base, share[k::parts]), ready, done), daemon=True)
                 for k in range(parts)]
        for proc in procs:
            proc.start()
        counts = [ready.get(timeout=600) for _ in procs]
        return procs, done, sum(c[0] for c in counts), sum(c[1] for c in counts)

    def release(procs: list[Any], done: MpEvent) -> None:
        done.set()
        for proc in procs:
            proc.join(30)

    def settle(expected: float) -> None:
        deadline = time.monotonic() + 120
        while asyncio.run(gauge(base, "graphql_subscriptions")) != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"subscriptions did not reach {expected}")
            time.sleep(0.5)
        time.sleep(3)

    # Warm-up: what the first sockets load once (modules, caches, allocator arenas) is not per socket.
    warm, rest = subscriptions[:WARM_SOCKETS], subscriptions[WARM_SOCKETS:]
    procs, done, _, _ = hold(warm, 1)
    settle(len(warm))
    release(procs, done)
    settle(0)
    before = server.memory_info().rss
    started = time.monotonic()
    procs, done, opened, failed = hold(rest, clients)
    try:
        settle(opened)
        took = time.monotonic() - started
        after = server.memory_info().rss
        tasks = asyncio.run(gauge(base, "asyncio_tasks"))
    finally:
        release(procs, done)
    say(f"idle: {opened} sockets subscribed in {took:.1f} s ({failed} failed), RSS {before / 2**20:.0f} MiB ->"
        f" {after / 2**20:.0f} MiB, {tasks:.0f} tasks")
    return {"idle_ws_count": opened, "idle_ws_failed": failed,
            "rss_kib_per_ws": round((after - before) / 1024 / max(opened, 1), 2),
            "idle_tasks_per_ws": round(tasks / max(opened, 1), 2)}


# -- the whole run ----------------------------------------------------------------------------------

def summary(prefix: str, result: Latency) -> dict[str, Any]:
    rate = result.rate
    return {f"{prefix}p50_ms_{rate}": result.p50_ms, f"{prefix}p99_ms_{rate}": result.p99_ms,
            f"{prefix}lost_{rate}": result.sent - result.received, f"{prefix}errors_{rate}": result.errors}


def run(settings: Settings, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **settings_env(settings), "LOG_LEVEL": "WARNING"}
    figures: dict[str, Any] = {}
    chats = args.chats
    users, tokens = asyncio.run(make_accounts(settings, 2 * chats + args.idle + WARM_SOCKETS))
    chat_ids = asyncio.run(make_chats(settings, [(users[2 * k], users[2 * k + 1]) for k in range(chats)]))
    idle_users, idle_tokens = users[2 * chats:], tokens[2 * chats:]
    bare_ports = [free_port(), free_port()]
    bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare"]
    bare = (f"http://127.0.0.1:{bare_ports[0]}", f"http://127.0.0.1:{bare_ports[1]}")
    with running([*bare_cmd, str(bare_ports[0])], env, tmp / "bare-a.log", f"{bare[0]}/graphql") as bare_a, \
            running([*bare_cmd, str(bare_ports[1])], env, tmp / "bare-b.log", f"{bare[1]}/graphql") as bare_b, \
            running_server(settings, tmp) as api_a, running_server(settings, tmp) as api_b, \
            running([sys.executable, "-m", "infra.cli", "worker", "chat-pusher"], env, tmp / "pusher.log",
                    None) as pusher:
        real_procs = (server_process(api_a), server_process(api_b), pusher)
        for rate in RATES:
            plain = uvloop.run(measure(bare_route(chats), *bare, rate, args.seconds, (bare_a, bare_b, None)))
            real = uvloop.run(measure(chat_route(chat_ids, tokens[0:2 * chats:2], tokens[1:2 * chats:2]),
                                      api_a, api_b, rate, args.seconds, real_procs))
            for name, result in (("bare", plain), ("chat", real)):
                say(f"{name} at {rate}/s: p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, received {result.received}"
                    f" of {result.sent}, {result.errors} errors; CPU s: sender {result.sender_cpu_s:.2f},"
                    f" receiver {result.receiver_cpu_s:.2f}, pusher {result.other_cpu_s:.2f}")
            figures |= summary("", real) | summary("bare_", plain)
            figures[f"ratio_p50_{rate}"] = round(real.p50_ms / plain.p50_ms, 3)
            figures[f"ratio_p99_{rate}"] = round(real.p99_ms / plain.p99_ms, 3)
            if rate == max(RATES):
                figures["send_msgs_per_s_per_core"] = round(real.sent / real.sender_cpu_s, 1)
                figures["pusher_msgs_per_s_per_core"] = round(real.sent / max(real.other_cpu_s, 1e-9), 1)
                figures["receive_msgs_per_s_per_core"] = round(real.received / real.receiver_cpu_s, 1)
                figures["bare_send_msgs_per_s_per_core"] = round(plain.sent / plain.sender_cpu_s, 1)
    if args.idle:
        # Both members of each chat subscribe to it, as two phones would.
        idle_chats = asyncio.run(make_chats(settings, list(zip(idle_users[0::2], idle_users[1::2], strict=True))))
        subscriptions = [(idle_tokens[j], CHAT_EVENTS, {"c": str(idle_chats[j // 2])})
                         for j in range(2 * len(idle_chats))]
        with running_server(settings, tmp) as api:
            figures |= bench_idle(api, server_process(api), subscriptions, args.clients)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per rate and path")
    parser.add_argument("--chats", type=int, default=50, help="chats (and sockets on each side) carrying the load")
    parser.add_argument("--idle", type=int, default=10_000, help="idle subscribed sockets held by one API process")
    parser.add_argument("--clients", type=int, default=4, help="processes holding the idle sockets")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    if args.serve_bare:
        serve_bare(args.serve_bare, os.environ["REDIS_URL"])
        return 0
    # Servers and client processes inherit this: 10,000 sockets need more than the usual 1,024 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 1000:
        raise SystemExit(f"the descriptor limit ({hard}) is too low for {args.idle} sockets")

    with tempfile.TemporaryDirectory(prefix="nf-bench-") as tmp, test_services(Path(tmp)) as services:
        settings = Settings(
            data_dir=Path(tmp) / "data", database_url=services.database_url, redis_url=services.redis_url,
            redis_prefix=services.redis_prefix, s3_endpoint_url=services.s3_endpoint_url,
            s3_access_key=services.s3_access_key, s3_secret_key=services.s3_secret_key,
            s3_bucket=services.s3_bucket, secret_key=secrets.token_urlsafe(48),
            argon2_time_cost=1, argon2_memory_kib=1024,
            # Rate limits stay on (their cost is part of the path) but never trip: one machine
            # plays thousands of users from one address.
            rate_limit_scale=1000.0,
        )
        asyncio.run(migrate(settings.database_url))
        figures = run(settings, Path(tmp), args)
    checks = {"ratio_p50_200": figures.get("ratio_p50_200", float("inf")) <= TARGETS["ratio_p50_200"],
              "rss_kib_per_ws": figures.get("rss_kib_per_ws", float("inf")) <= TARGETS["rss_kib_per_ws"]
              and figures.get("idle_ws_count", 0) >= args.idle}
    figures |= {"targets": TARGETS, "met": all(checks.values()), "cpus": os.cpu_count(),
                "settings": {"seconds": args.seconds, "chats": args.chats, "idle": args.idle, "clients": args.clients}}
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
