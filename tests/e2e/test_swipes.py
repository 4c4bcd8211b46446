import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from infra.app import Runtime
from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import Account, gql, running_server, sign_up, ws_url

SWIPE = """mutation($id: ID!) { %s(userId: $id) { __typename
  ... on Swipe { direction superLike person { id } } ... on Error { code }
  ... on LimitError { retryAfterSeconds } } }"""
UNDO = "mutation { undoLastSwipe { __typename ... on Swipe { direction person { id } } ... on Error { code } } }"
MATCHES = """query($first: Int, $after: String) { matches(first: $first, after: $after) {
  edges { cursor node { id createdAt person { id displayName } } } pageInfo { hasNextPage endCursor } } }"""
RELATION = "mutation($id: ID!) { %s(%s: $id) { __typename ... on Error { code } } }"


@pytest.fixture(scope="module")
def swipe_writer(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("writer") / "writer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "swipe-writer"],
                                env={**os.environ, **settings_env(settings)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            assert proc.wait(20) == 0, log.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


async def swipe(base: str, kind: str, actor: Account, target: str) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(base, SWIPE % kind, {"id": target}, actor.access_token))["data"][kind]
    return result


@asynccontextmanager
async def events_of(base: str, account: Account) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """myEvents for one account on one API process, as a queue of payloads."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    protocol = websockets.Subprotocol("graphql-transport-ws")
    async with websockets.connect(ws_url(base), subprotocols=[protocol]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {account.access_token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "subscribe", "id": "e", "payload": {"query": """subscription { myEvents {
            __typename ... on MatchCreated { match { id createdAt person { id } } }
            ... on MatchEnded { matchId } } }"""}}))
        await asyncio.sleep(0.3)  # the protocol has no "subscribed" message

        async def pump() -> None:
            async for frame in ws:
                message = json.loads(frame)
                if message["type"] == "next":
                    await queue.put(message["payload"]["data"]["myEvents"])

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()


async def next_event(queue: asyncio.Queue[dict[str, Any]], typename: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            event = await queue.get()
            if event["__typename"] == typename:
                return event


async def test_mutual_like_makes_one_match_told_to_both(api_servers: list[str], swipe_writer: None) -> None:
    first_api, second_api = api_servers
    ann, bob = await sign_up(first_api), await sign_up(second_api)
    async with events_of(first_api, ann) as ann_events, events_of(second_api, bob) as bob_events:
        liked = await swipe(first_api, "like", ann, bob.id)
        assert liked == {"__typename": "Swipe", "direction": "LIKE", "superLike": False, "person": {"id": bob.id}}
        await swipe(second_api, "like", bob, ann.id)
        ann_match = await next_event(ann_events, "MatchCreated")
        bob_match = await next_event(bob_events, "MatchCreated")
    assert ann_match["match"]["id"] == bob_match["match"]["id"]
    assert ann_match["match"]["createdAt"] == bob_match["match"]["createdAt"]  # one moment, not each server's
    assert ann_match["match"]["person"]["id"] == bob.id and bob_match["match"]["person"]["id"] == ann.id
    for account, other in ((ann, bob), (bob, ann)):
        edges = (await gql(first_api, MATCHES, {}, account.access_token))["data"]["matches"]["edges"]
        assert [e["node"]["person"]["id"] for e in edges] == [other.id]
        assert edges[0]["node"]["createdAt"] == ann_match["match"]["createdAt"]


async def test_swiping_again_changes_nothing(api: str, swipe_writer: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    first = await swipe(api, "dislike", ann, bob.id)
    assert first["direction"] == "DISLIKE"
    again = await swipe(api, "like", ann, bob.id)  # still the dislike: swipes are changed with undo only
    assert again == first


async def test_bad_targets(api: str, settings: Settings, swipe_writer: None) -> None:
    ann, gone, hidden = await sign_up(api), await sign_up(api), await sign_up(api)
    await gql(api, "mutation { updateProfile(input: {visibility: HIDDEN}) { __typename } }", token=hidden.access_token)
    await gql(api, "mutation($p: String!) { deleteAccount(password: $p) { __typename } }", {"p": gone.password},
              gone.access_token)
    for kind in ("like", "dislike", "superLike"):
        assert (await swipe(api, kind, ann, ann.id))["code"] == "CANNOT_SWIPE_SELF"
        assert (await swipe(api, kind, ann, "not-an-id"))["code"] == "INVALID_ID"
        for target in (str(uuid.uuid4()), gone.id, hidden.id):
            assert (await swipe(api, kind, ann, target))["__typename"] == "NotFoundError", (kind, target)


async def test_block_hides_both_ways_and_ends_the_match(api: str, swipe_writer: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    async with events_of(api, bob) as bob_events:
        await swipe(api, "like", ann, bob.id)
        await swipe(api, "like", bob, ann.id)
        match = await next_event(bob_events, "MatchCreated")
        assert (await gql(api, RELATION % ("block", "userId"), {"id": bob.id}, ann.access_token))["data"]["block"] \
            == {"__typename": "Done"}
        ended = await next_event(bob_events, "MatchEnded")
    assert ended["matchId"] == match["match"]["id"]
    for actor, other in ((ann, bob), (bob, ann)):
        body = await gql(api, "query($id: ID!) { person(id: $id) { id } }", {"id": other.id}, actor.access_token)
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert (await swipe(api, "like", actor, other.id))["__typename"] == "NotFoundError"
        assert (await gql(api, MATCHES, {}, actor.access_token))["data"]["matches"]["edges"] == []


async def test_report_is_stored_and_blocks(api: str, settings: Settings, swipe_writer: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    query = """mutation($id: ID!, $d: String!) { report(userId: $id, reason: HARASSMENT, details: $d) {
      __typename ... on Error { code } } }"""
    assert (await gql(api, query, {"id": bob.id, "d": "Rude\\nmessages"}, ann.access_token))["data"]["report"] \
        == {"__typename": "Done"}
    too_long = await gql(api, query, {"id": bob.id, "d": "x" * 2001}, ann.access_token)
    assert too_long["data"]["report"]["__typename"] in ("InputError", "NotFoundError")
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT reason, details FROM reports WHERE reporter_id = $1", uuid.UUID(ann.id))
    finally:
        await conn.close()
    assert row is not None and row["reason"] == "HARASSMENT"
    assert (await swipe(api, "like", bob, ann.id))["__typename"] == "NotFoundError"


async def test_unmatch_is_final(api: str, swipe_writer: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    async with events_of(api, ann) as ann_events:
        await swipe(api, "like", ann, bob.id)
        await swipe(api, "like", bob, ann.id)
        match_id = (await next_event(ann_events, "MatchCreated"))["match"]["id"]
        stranger = await sign_up(api)
        unmatch = RELATION % ("unmatch", "matchId")
        assert (await gql(api, unmatch, {"id": match_id}, stranger.access_token))["data"]["unmatch"]["code"] \
            == "NOT_FOUND"
        done = (await gql(api, unmatch, {"id": match_id}, bob.access_token))["data"]["unmatch"]
        assert done == {"__typename": "Done"}
        assert (await next_event(ann_events, "MatchEnded"))["matchId"] == match_id
    for actor, other in ((ann, bob), (bob, ann)):
        assert (await gql(api, unmatch, {"id": match_id}, actor.access_token))["data"]["unmatch"]["code"] == "NOT_FOUND"
        assert (await gql(api, MATCHES, {}, actor.access_token))["data"]["matches"]["edges"] == []
        # Final: each is gone for the other everywhere, as after a block, so no new match can start.
        body = await gql(api, "query($id: ID!) { person(id: $id) { id } }", {"id": other.id}, actor.access_token)
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert (await swipe(api, "like", actor, other.id))["__typename"] == "NotFoundError"


async def test_undo_last_swipe(api: str, swipe_writer: None) -> None:
    ann, bob, cat = await sign_up(api), await sign_up(api), await sign_up(api)
    assert (await gql(api, UNDO, token=ann.access_token))["data"]["undoLastSwipe"]["code"] == "NOTHING_TO_UNDO"
    await swipe(api, "dislike", ann, bob.id)
    undone = (await gql(api, UNDO, token=ann.access_token))["data"]["undoLastSwipe"]
    assert undone == {"__typename": "Swipe", "direction": "DISLIKE", "person": {"id": bob.id}}
    assert (await gql(api, UNDO, token=ann.access_token))["data"]["undoLastSwipe"]["code"] == "NOTHING_TO_UNDO"
    assert (await swipe(api, "like", ann, bob.id))["direction"] == "LIKE"  # a fresh choice, not a no-op
    await swipe(api, "like", cat, ann.id)
    async with events_of(api, ann) as events:
        await swipe(api, "like", ann, cat.id)
        await next_event(events, "MatchCreated")
    assert (await gql(api, UNDO, token=ann.access_token))["data"]["undoLastSwipe"]["code"] == "ALREADY_MATCHED"


async def test_like_quotas(settings: Settings, migrated: None, tmp_path: Path, swipe_writer: None) -> None:
    with running_server(settings, tmp_path, LIKES_PER_DAY="3", SUPER_LIKES_PER_DAY="1") as base:
        ann = await sign_up(base)
        others = [await sign_up(base) for _ in range(6)]
        assert (await swipe(base, "superLike", ann, others[0].id))["superLike"] is True
        assert (await swipe(base, "superLike", ann, others[1].id))["code"] == "QUOTA_EXCEEDED"
        for other in others[1:3]:
            assert (await swipe(base, "like", ann, other.id))["__typename"] == "Swipe"
        over = await swipe(base, "like", ann, others[3].id)
        assert over["code"] == "QUOTA_EXCEEDED" and 0 < over["retryAfterSeconds"] <= 86400
        # Undoing a like gives it back, once.
        undone = (await gql(base, UNDO, token=ann.access_token))["data"]["undoLastSwipe"]
        assert undone == {"__typename": "Swipe", "direction": "LIKE", "person": {"id": others[2].id}}
        assert (await swipe(base, "like", ann, others[3].id))["__typename"] == "Swipe"
        assert (await swipe(base, "like", ann, others[4].id))["code"] == "QUOTA_EXCEEDED"
        assert (await swipe(base, "dislike", ann, others[5].id))["__typename"] == "Swipe"  # passes are free


async def test_matches_pages_without_gaps(api: str, swipe_writer: None) -> None:
    ann = await sign_up(api)
    others = [await sign_up(api) for _ in range(5)]
    async with events_of(api, ann) as events:
        for other in others:
            await swipe(api, "like", other, ann.id)
            await swipe(api, "like", ann, other.id)
        for _ in others:
            await next_event(events, "MatchCreated")
    seen: list[str] = []
    after = None
    while True:
        page = (await gql(api, MATCHES, {"first": 2, "after": after}, ann.access_token))["data"]["matches"]
        seen += [e["node"]["person"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert sorted(seen) == sorted(o.id for o in others) and len(seen) == 5
    stranger = await sign_up(api)  # someone else's cursor is not a cursor of their list
    body = await gql(api, MATCHES, {"first": 2, "after": after}, stranger.access_token)
    assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    for bad in ("forged", after + "x" if after else "x"):
        body = await gql(api, MATCHES, {"first": 2, "after": bad}, ann.access_token)
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    for first in (0, -1, 101):
        body = await gql(api, MATCHES, {"first": first}, ann.access_token)
        assert body["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_deleting_an_account_ends_its_matches(api: str, swipe_writer: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    async with events_of(api, ann) as ann_events:
        await swipe(api, "like", ann, bob.id)
        await swipe(api, "like", bob, ann.id)
        match_id = (await next_event(ann_events, "MatchCreated"))["match"]["id"]
        await gql(api, "mutation($p: String!) { deleteAccount(password: $p) { __typename } }", {"p": bob.password},
                  bob.access_token)
        assert (await next_event(ann_events, "MatchEnded"))["matchId"] == match_id
    assert (await gql(api, MATCHES, {}, ann.access_token))["data"]["matches"]["edges"] == []


async def test_super_likes_wait_for_their_recipient(api: str, runtime: Runtime, swipe_writer: None) -> None:
    ann, bob, cat = await sign_up(api), await sign_up(api), await sign_up(api)
    relations = runtime.require_ports().swipes.relations
    bob_id = uuid.UUID(bob.id)
    assert (await swipe(api, "superLike", ann, bob.id))["superLike"] is True
    await swipe(api, "like", cat, bob.id)  # a plain like is not announced ahead
    await eventually(lambda: relations.super_likers(bob_id, 10), [uuid.UUID(ann.id)])
    await swipe(api, "dislike", bob, ann.id)  # answered: no longer first in line
    await eventually(lambda: relations.super_likers(bob_id, 10), [])


async def eventually(read: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.05)
