"""Beyond one process, on a Redis Cluster: two API processes and two of every worker share one
PostgreSQL, one S3 bucket and a 3-primary Redis Cluster. Every feature works across them, each
worker kind splits its partitions, and stopping any one process (SIGTERM, or SIGKILL) in the middle
of traffic loses no acknowledged swipe or message."""
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from infra.archive import ARCHIVE_WRITER, windows_spec
from infra.chat_log import CHAT_AGGREGATOR, CHAT_PUSHER, chats_spec
from infra.devstack import free_port
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import StreamSpec
from infra.swipe_queue import SWIPE_WRITER, swipes_spec
from tests.conftest import settings_env
from tests.e2e.chats import CHAT_EVENTS, open_socket
from tests.e2e.conftest import Account, gql, sign_up

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6  # per stream: few enough that two of each worker start and split them quickly
WORKERS = ("swipe-writer", "chat-pusher", "chat-aggregator", "archive-writer", "location-updater", "photos",
           "janitor")
RECENT = 10  # messages kept in Redis per chat: history beyond them comes from the archive
PEOPLE = 12  # swipers, each liking every other one
MESSAGES = 120
WAIT = 45.0

LOCATE = """mutation($lat: Float!, $lon: Float!) { updateLocation(latitude: $lat, longitude: $lon, accuracyMeters: 10) {
  __typename ... on Error { code message } } }"""
NEARBY = "query { nearbyCandidates(first: 100) { edges { node { person { id } } } } }"
LIKE = "mutation($id: ID!) { like(userId: $id) { __typename ... on Error { code message } } }"
MY_EVENTS = "subscription { myEvents { __typename ... on MatchCreated { match { id chatId person { id } } } } }"
SEND = """mutation($chat: ID!, $cmid: String!, $text: String!) { sendMessage(chatId: $chat, clientMessageId: $cmid,
  text: $text) { __typename ... on Message { seq text } ... on Error { code message } } }"""
HISTORY = """query($chat: ID!, $before: String) { messages(chatId: $chat, last: 50, before: $before) {
  edges { node { seq text } } pageInfo { hasPreviousPage startCursor } } }"""


@dataclass
class Process:
    name: str
    popen: "subprocess.Popen[bytes]"
    log: Path
    base: str = ""  # API processes only

    def holds(self, holder: bytes | None) -> bool:
        # Stream consumer ids are host:pid:random (see workers/).
        return self.popen.poll() is None and holder is not None and f":{self.popen.pid}:".encode() in holder

    def stop(self, how: signal.Signals) -> int:
        self.popen.send_signal(how)
        try:
            return self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@dataclass
class Fleet:
    settings: Settings
    apis: list[Process]
    workers: dict[str, list[Process]]
    acknowledged_swipes: set[tuple[str, str]] = field(default_factory=set)
    acknowledged_messages: dict[int, str] = field(default_factory=dict)

    def live_apis(self) -> list[Process]:
        return [api for api in self.apis if api.popen.poll() is None]


def _launch(name: str, args: list[str], env: dict[str, str], logs: Path) -> Process:
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", "infra.cli", *args], env=env, cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)
    return Process(name, popen, log)


def _wait_ready(api: Process) -> None:
    deadline = time.monotonic() + 60
    while True:
        if api.popen.poll() is not None:
            raise RuntimeError(f"{api.name} exited early:\n{api.log.read_text()[-3000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{api.base}/readyz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{api.name} did not become ready:\n{api.log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(settings: Settings, migrated: None, redis_cluster: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("many-processes")
    # A prefix of its own: its fences and archive in the shared database stay apart from other tests'.
    fleet_settings = replace(settings, redis_url=redis_cluster,
                             redis_prefix=f"{settings.redis_prefix}mp{secrets.token_hex(2)}:")
    env = {**os.environ, **settings_env(fleet_settings), "LOG_LEVEL": "INFO",
           "SWIPE_PARTITIONS": str(PARTITIONS), "CHAT_PARTITIONS": str(PARTITIONS),
           "STREAM_LEASE_SECONDS": "1.5", "ARCHIVE_WINDOW_SECONDS": "1", "CHAT_RECENT_MESSAGES": str(RECENT)}
    with ExitStack() as stack:
        apis: list[Process] = []
        for i in range(2):
            port = free_port()
            api = _launch(f"api-{i}", ["serve", "--port", str(port)], env, logs)
            api.base = f"http://127.0.0.1:{port}"
            stack.callback(api.stop, signal.SIGTERM)
            apis.append(api)
        workers: dict[str, list[Process]] = {}
        for name in WORKERS:
            for i in range(2):
                # Each aggregator keeps its own local log, as on its own machine.
                own = {**env, "ARCHIVE_WAL_DIR": str(logs / f"wal-{i}")}
                process = _launch(f"{name}-{i}", ["worker", name], own, logs)
                stack.callback(process.stop, signal.SIGTERM)
                workers.setdefault(name, []).append(process)
        for api in apis:
            _wait_ready(api)
        yield Fleet(fleet_settings, apis, workers)


async def _owners(fleet: Fleet, spec: StreamSpec, group: str, processes: list[Process]) -> list[set[int]]:
    redis = open_redis(fleet.settings.redis_url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for partition in range(spec.partitions):
                pipe.get(spec.lease_key(partition, group))
            holders = await pipe.execute()
    finally:
        await redis.aclose()
    return [{p for p, holder in enumerate(holders) if process.holds(holder)} for process in processes]


async def _until(check: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        await asyncio.sleep(0.2)


def _streams(fleet: Fleet) -> list[tuple[str, StreamSpec, str]]:
    prefix = fleet.settings.redis_prefix
    return [("swipe-writer", swipes_spec(prefix, PARTITIONS), SWIPE_WRITER),
            ("chat-pusher", chats_spec(prefix, PARTITIONS), CHAT_PUSHER),
            ("chat-aggregator", chats_spec(prefix, PARTITIONS), CHAT_AGGREGATOR),
            ("archive-writer", windows_spec(prefix, PARTITIONS), ARCHIVE_WRITER)]


async def _spread(fleet: Fleet, every: bool) -> None:
    """Each worker kind's partitions split between its live processes, all partitions owned."""
    for name, spec, group in _streams(fleet):
        processes = [p for p in fleet.workers[name] if p.popen.poll() is None]

        async def split(spec: StreamSpec = spec, group: str = group, processes: list[Process] = processes) -> bool:
            owned = await _owners(fleet, spec, group, processes)
            covered = set().union(*owned) == set(range(spec.partitions))
            return covered and (not every or all(owned))

        await _until(split, f"{name}: partitions not {'split between' if every else 'taken over by'} "
                            f"{[p.name for p in processes]}")


async def _holder(fleet: Fleet, name: str, chat: str) -> Process:
    spec, group = next((spec, group) for kind, spec, group in _streams(fleet) if kind == name)
    partition = spec.partition_of(chat)
    for process, owned in zip(fleet.workers[name], await _owners(fleet, spec, group, fleet.workers[name]),
                              strict=True):
        if partition in owned:
            return process
    raise AssertionError(f"no {name} holds partition {partition}")


async def _located_pair(fleet: Fleet) -> tuple[Account, Account]:
    first, second = fleet.apis[0].base, fleet.apis[1].base
    ann, bob = await sign_up(first), await sign_up(second)
    for who, base, lat in ((ann, first, 48.8566), (bob, second, 48.8570)):
        located = (await gql(base, LOCATE, {"lat": lat, "lon": 2.3522}, who.access_token))["data"]["updateLocation"]
        assert located["__typename"] == "MyLocation", located
    return ann, bob


async def test_every_feature_works_across_processes_on_a_redis_cluster(fleet: Fleet) -> None:
    await _spread(fleet, every=True)
    first, second = fleet.apis[0].base, fleet.apis[1].base
    ann, bob = await _located_pair(fleet)

    async def ann_sees_bob() -> bool:  # written through one API, placed by an updater, read through the other
        body = await gql(second, NEARBY, {}, ann.access_token)
        assert "errors" not in body, body
        return bob.id in {e["node"]["person"]["id"] for e in body["data"]["nearbyCandidates"]["edges"]}

    await _until(ann_sees_bob, "ann did not see bob nearby")

    async with open_socket(first, bob.access_token) as bobs_events:
        await bobs_events.start("events", MY_EVENTS)
        await asyncio.sleep(0.3)
        assert (await gql(first, LIKE, {"id": bob.id}, ann.access_token))["data"]["like"]["__typename"] == "Swipe"
        assert (await gql(second, LIKE, {"id": ann.id}, bob.access_token))["data"]["like"]["__typename"] == "Swipe"
        event = (await bobs_events.result("events", WAIT))["data"]["myEvents"]
        while event["__typename"] != "MatchCreated":
            event = (await bobs_events.result("events", WAIT))["data"]["myEvents"]
        assert event["match"]["person"]["id"] == ann.id, event
        chat = event["match"]["chatId"]

    async with open_socket(first, bob.access_token) as bobs_chat:
        await bobs_chat.start("chat", CHAT_EVENTS, {"chat": chat, "after": 0})
        await asyncio.sleep(0.3)
        sent = (await gql(second, SEND, {"chat": chat, "cmid": "hello-1", "text": "hello"},
                          ann.access_token))["data"]["sendMessage"]
        assert sent == {"__typename": "Message", "seq": 1, "text": "hello"}, sent
        heard = (await bobs_chat.result("chat", WAIT))["data"]["chatEvents"]
        assert heard["__typename"] == "MessageSent" and heard["message"]["text"] == "hello", heard


async def _swipe_load(fleet: Fleet, people: list[Account], stop: asyncio.Event) -> None:
    pairs = [(a, b) for a in people for b in people if a is not b]
    for i, (who, target) in enumerate(pairs):
        if stop.is_set():
            return
        apis = fleet.live_apis()
        base = apis[i % len(apis)].base
        with suppress(httpx.HTTPError):  # an API stopped under the request: not acknowledged
            body = await gql(base, LIKE, {"id": target.id}, who.access_token)
            if body.get("data") and body["data"]["like"]["__typename"] == "Swipe":
                fleet.acknowledged_swipes.add((who.id, target.id))
        await asyncio.sleep(0.01)


async def _message_load(fleet: Fleet, ann: Account, bob: Account, chat: str) -> None:
    for i in range(MESSAGES):
        apis = fleet.live_apis()
        base, who, text = apis[i % len(apis)].base, (ann, bob)[i % 2], f"message {i}"
        with suppress(httpx.HTTPError):
            body = await gql(base, SEND, {"chat": chat, "cmid": f"m{i}", "text": text}, who.access_token)
            sent = (body.get("data") or {}).get("sendMessage") or {}
            if sent.get("__typename") == "Message":
                fleet.acknowledged_messages[sent["seq"]] = sent["text"]
        await asyncio.sleep(0.03)


async def _history(base: str, token: str, chat: str) -> dict[int, str]:
    found: dict[int, str] = {}
    before: str | None = None
    while True:
        body = await gql(base, HISTORY, {"chat": chat, "before": before}, token)
        assert "errors" not in body, body
        page = body["data"]["messages"]
        found.update({e["node"]["seq"]: e["node"]["text"] for e in page["edges"]})
        if not page["pageInfo"]["hasPreviousPage"]:
            return found
        before = page["pageInfo"]["startCursor"]


async def test_stopping_any_one_process_loses_nothing_acknowledged(fleet: Fleet) -> None:
    await _spread(fleet, every=True)
    survivor = fleet.apis[0].base
    people = [await sign_up(fleet.apis[i % 2].base) for i in range(PEOPLE)]
    ann, bob = people[0], people[1]
    # Ann and Bob are among the swipers: their mutual like makes the chat the messages go to.
    for a, b in ((ann, bob), (bob, ann)):
        assert (await gql(survivor, LIKE, {"id": b.id}, a.access_token))["data"]["like"]["__typename"] == "Swipe"
        fleet.acknowledged_swipes.add((a.id, b.id))
    chats: list[str] = []

    async def matched() -> bool:
        body = await gql(survivor, "query { matches { edges { node { chatId } } } }", {}, ann.access_token)
        chats[:] = [e["node"]["chatId"] for e in body["data"]["matches"]["edges"]]
        return bool(chats)

    await _until(matched, "ann and bob were not matched")
    chat = chats[0]

    heard: dict[int, str] = {}
    async with open_socket(survivor, bob.access_token) as live:
        await live.start("chat", CHAT_EVENTS, {"chat": chat, "after": 0})
        await asyncio.sleep(0.3)

        async def listen() -> None:
            while True:
                event = (await live.result("chat", WAIT))["data"]["chatEvents"]
                if event["__typename"] == "MessageSent":
                    heard[event["message"]["seq"]] = event["message"]["text"]

        listener = asyncio.create_task(listen())
        stop_swiping = asyncio.Event()
        load = asyncio.gather(_swipe_load(fleet, people, stop_swiping), _message_load(fleet, ann, bob, chat))
        # One process at a time, each while traffic flows: a clean stop, then crashes.
        w = fleet.workers
        # The chat's workers are the ones that hold its partition: those are the stops that matter.
        pusher, aggregator, archiver = [await _holder(fleet, name, chat) for name in
                                        ("chat-pusher", "chat-aggregator", "archive-writer")]
        stops = [(w["swipe-writer"][0], signal.SIGTERM), (pusher, signal.SIGKILL), (aggregator, signal.SIGKILL),
                 (fleet.apis[1], signal.SIGKILL), (archiver, signal.SIGTERM),
                 (w["location-updater"][0], signal.SIGKILL), (w["swipe-writer"][1], signal.SIGKILL)]
        codes = []
        for process, how in stops:
            await asyncio.sleep(0.8)
            codes.append((process.name, how, await asyncio.to_thread(process.stop, how)))
        # Both swipe writers are down now: start one again, as an operator (or a supervisor) would.
        env = {**os.environ, **settings_env(fleet.settings), "SWIPE_PARTITIONS": str(PARTITIONS),
               "STREAM_LEASE_SECONDS": "1.5"}
        log_dir = fleet.workers["swipe-writer"][0].log.parent
        restarted = _launch("swipe-writer-2", ["worker", "swipe-writer"], env, log_dir)
        fleet.workers["swipe-writer"].append(restarted)
        try:
            assert not load.done(), "the traffic ended before the last stop"
            await load
            stop_swiping.set()
            assert all(code == 0 for _, how, code in codes if how == signal.SIGTERM), codes  # clean stops
            assert len(fleet.acknowledged_messages) > MESSAGES // 2 and len(fleet.acknowledged_swipes) > PEOPLE

            await _spread(fleet, every=False)  # the survivors (and the restarted writer) own every partition
            wanted = fleet.acknowledged_messages

            async def all_heard() -> bool:
                return set(wanted) <= set(heard)

            await _until(all_heard, f"acknowledged messages not delivered live: {sorted(set(wanted) - set(heard))}")
            assert all(heard[seq] == text for seq, text in wanted.items())
        finally:
            listener.cancel()
            restarted.stop(signal.SIGTERM)

    async def all_swipes_written() -> bool:
        conn = await asyncpg.connect(fleet.settings.database_url)
        try:
            rows = await conn.fetch("SELECT user_id::text, target_id::text FROM swipes WHERE user_id = ANY($1::uuid[])",
                                    [p.id for p in people])
        finally:
            await conn.close()
        return fleet.acknowledged_swipes <= {(r[0], r[1]) for r in rows}

    await _until(all_swipes_written, "acknowledged swipes missing from PostgreSQL")

    # Older messages than the recent store holds come from the archive the aggregators and archive
    # writers built while being stopped.
    async def history_complete() -> bool:
        history = await _history(survivor, ann.access_token, chat)
        return all(history.get(seq) == text for seq, text in wanted.items())

    await _until(history_complete, "acknowledged messages missing from the history")
    history = await _history(survivor, ann.access_token, chat)
    assert sorted(history) == list(range(1, max(history) + 1))  # numbered without gaps
