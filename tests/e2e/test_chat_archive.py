"""Chat history from the archive, end to end: a real API process keeping only 5 recent messages per
chat, real chat-aggregator and archive-writer processes with 1-second windows, and `messages`
paging over HTTP back to message 1 and forward again across every seam; then the archive's erasure
when a match ends (unmatch, account deletion) and its hold for moderation when one reported the
other."""
import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from infra.settings import Settings
from tests.e2e.chats import matched_pair, send, worker
from tests.e2e.conftest import Account, gql, running_server

MESSAGES = """query($chat: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  messages(chatId: $chat, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { seq text } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
COUNT = 40
UNMATCH = "mutation($id: ID!) { unmatch(matchId: $id) { __typename } }"
REPORT = 'mutation($id: ID!) { report(userId: $id, reason: HARASSMENT, details: "") { __typename } }'
DELETE = "mutation($p: String!) { deleteAccount(password: $p) { __typename } }"
HOLD_DAYS = 3


@pytest.fixture(scope="module")
def archived_api(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("archive-e2e")
    env = {"REDIS_PREFIX": f"{settings.redis_prefix}arch{secrets.token_hex(3)}:", "CHAT_PARTITIONS": "4",
           "CHAT_RECENT_MESSAGES": "5", "ARCHIVE_WINDOW_SECONDS": "1", "STREAM_LEASE_SECONDS": "1.5",
           "ARCHIVE_WAL_DIR": str(logs / "wal"),
           "ARCHIVE_REPORT_HOLD_DAYS": str(HOLD_DAYS)}
    with running_server(settings, logs, **env) as base, \
            worker(settings, "swipe-writer", logs / "swipe-writer.log", **env), \
            worker(settings, "chat-aggregator", logs / "aggregator.log", **env), \
            worker(settings, "archive-writer", logs / "archive-writer.log", **env):
        yield base


async def archived_up_to(settings: Settings, chat_id: str) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(seq_to), 0) FROM chat_archive_segments"
                                       " WHERE chat_id = $1::uuid", chat_id) or 0)
    finally:
        await conn.close()


async def page(base: str, token: str, chat: str, **args: Any) -> dict[str, Any]:
    body = await gql(base, MESSAGES, {"chat": chat, **args}, token)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["messages"]
    return result


async def test_messages_page_back_to_the_first_across_archive_and_recent_store(
        archived_api: str, settings: Settings) -> None:
    ann, bob, chat = await matched_pair(archived_api)
    texts = [f"message {i}" for i in range(1, COUNT + 1)]
    for i, text in enumerate(texts):
        await send(archived_api, ann if i % 2 else bob, chat, text)
        if i % 10 == 9:
            await asyncio.sleep(0.6)  # several windows
    deadline = time.monotonic() + 60
    while await archived_up_to(settings, chat) < COUNT - 5:  # the recent store holds the newest 5
        assert time.monotonic() < deadline, "the archive did not catch up"
        await asyncio.sleep(0.2)

    seen: list[tuple[int, str]] = []
    before: str | None = None
    while True:
        found = await page(archived_api, ann.access_token, chat, last=7, before=before)
        seen = [(e["node"]["seq"], e["node"]["text"]) for e in found["edges"]] + seen
        if not found["pageInfo"]["hasPreviousPage"]:
            break
        before = found["pageInfo"]["startCursor"]
    assert seen == list(enumerate(texts, start=1))

    seen, after = [], None
    while True:
        found = await page(archived_api, bob.access_token, chat, first=9, after=after)
        seen += [(e["node"]["seq"], e["node"]["text"]) for e in found["edges"]]
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    assert seen == list(enumerate(texts, start=1))


async def key_state(settings: Settings, chat_id: str) -> tuple[bool, datetime | None, int]:
    """Whether the chat's data key still exists, when it is to be erased, and its segments indexed."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT wrapped IS NOT NULL AS alive, erase_after FROM chat_archive_keys"
                                  " WHERE chat_id = $1::uuid", chat_id)
        segments = await conn.fetchval("SELECT count(*) FROM chat_archive_segments WHERE chat_id = $1::uuid",
                                       chat_id)
    finally:
        await conn.close()
    assert row is not None, "an archived chat has a data key"
    return bool(row["alive"]), row["erase_after"], int(segments)


async def archived_chat(base: str, settings: Settings) -> tuple[Account, Account, str]:
    ann, bob, chat = await matched_pair(base)
    for i in range(8):
        await send(base, ann, chat, f"to be ended {i}")
    deadline = time.monotonic() + 60
    while await archived_up_to(settings, chat) < 3:  # past the 5 the recent store keeps
        assert time.monotonic() < deadline, "the archive did not catch up"
        await asyncio.sleep(0.2)
    return ann, bob, chat


async def test_an_ended_match_erases_its_archive_and_a_reported_one_waits_for_moderation(
        archived_api: str, settings: Settings) -> None:
    unmatched, reported, deleted = [await archived_chat(archived_api, settings) for _ in range(3)]
    assert (await key_state(settings, unmatched[2]))[0]

    ann, _, chat = unmatched
    assert (await gql(archived_api, UNMATCH, {"id": chat}, ann.access_token))["data"]["unmatch"] \
        == {"__typename": "Done"}
    alive, _, segments = await key_state(settings, chat)
    assert not alive and segments == 0  # erased at once: its bytes in the objects can no longer be opened

    ann, bob, chat = deleted
    done = await gql(archived_api, DELETE, {"p": bob.password}, bob.access_token)
    assert done["data"]["deleteAccount"]["__typename"] == "Done", done
    assert not (await key_state(settings, chat))[0]

    ann, bob, chat = reported
    before = datetime.now(UTC)
    assert (await gql(archived_api, REPORT, {"id": bob.id}, ann.access_token))["data"]["report"] \
        == {"__typename": "Done"}
    alive, erase_after, segments = await key_state(settings, chat)
    assert alive and segments > 0  # still readable by moderation...
    assert erase_after is not None
    assert before + timedelta(days=HOLD_DAYS) <= erase_after <= datetime.now(UTC) + timedelta(days=HOLD_DAYS)
    # ...but not by either of them: the chat is gone for both.
    gone = await gql(archived_api, MESSAGES, {"chat": chat, "last": 5}, ann.access_token)
    assert gone["data"] is None or gone["data"]["messages"] is None, gone
