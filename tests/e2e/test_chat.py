"""Chat end to end: real API processes (subscribe on one, send on the other), real workers, both
WebSocket subprotocols."""
import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from infra.settings import Settings
from tests.e2e.chats import (
    CHAT_EVENTS,
    LEGACY_WS,
    SEND,
    TRANSPORT_WS,
    matched_pair,
    open_socket,
    send,
    subscribed,
    worker,
)
from tests.e2e.conftest import gql, sign_up

PROTOCOLS = [pytest.param(LEGACY_WS, id="graphql-ws"), pytest.param(TRANSPORT_WS, id="graphql-transport-ws")]
MESSAGES = """query($chat: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  messages(chatId: $chat, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { seq text fromMe } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
MARK_READ = """mutation($chat: ID!, $seq: Int!) { markRead(chatId: $chat, upToSeq: $seq) { __typename
  ... on ReadState { upToSeq } ... on Error { code } } }"""
TYPING = "mutation($chat: ID!) { setTyping(chatId: $chat) { __typename ... on Error { code } } }"
UNMATCH = "mutation($id: ID!) { unmatch(matchId: $id) { __typename ... on Error { code } } }"
BLOCK = "mutation($id: ID!) { block(userId: $id) { __typename ... on Error { code } } }"
MY_EVENTS = """subscription { myEvents { __typename ... on NewMessage { message { chatId seq fromMe text } }
  ... on MatchEnded { matchId } } }"""


@pytest.fixture(scope="module")
def workers(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("chat-workers")
    with worker(settings, "swipe-writer", logs / "swipe-writer.log"), \
            worker(settings, "chat-pusher", logs / "chat-pusher.log"):
        yield


async def messages_until(socket: Any, op_id: str, last_seq: int) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < last_seq:
        event = (await socket.result(op_id))["data"]["chatEvents"]
        if event["__typename"] == "MessageSent":
            seqs.append(event["message"]["seq"])
    return seqs


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_reconnecting_after_37_of_100_gets_exactly_38_to_100(
        api_servers: list[str], workers: None, protocol: str) -> None:
    listening, sending = api_servers
    ann, bob, chat = await matched_pair(sending)
    async with open_socket(listening, bob.access_token, protocol) as socket:
        await subscribed(socket, "c", chat, 0)

        async def send_all() -> None:
            for i in range(1, 101):
                await send(sending, ann, chat, f"message {i}")

        sender = asyncio.create_task(send_all())
        assert await messages_until(socket, "c", 37) == list(range(1, 38))
        await socket.close()  # gone mid-stream, while messages keep coming
    async with open_socket(listening, bob.access_token, protocol) as socket:
        await socket.start("again", CHAT_EVENTS, {"chat": chat, "after": 37})
        await sender
        assert await messages_until(socket, "again", 100) == list(range(38, 101))
        await asyncio.sleep(0.5)
        with pytest.raises(TimeoutError):  # and nothing more: no duplicate after the seam
            await socket.frame("again", timeout=0.5)


async def test_concurrent_senders_on_two_servers_get_gap_free_numbers(api_servers: list[str], workers: None) -> None:
    first, second = api_servers
    ann, bob, chat = await matched_pair(first)
    sends = [send(api_servers[i % 2], (ann, bob)[i % 2], chat, f"hello {i}") for i in range(100)]
    results = await asyncio.gather(*sends)
    assert sorted(r["seq"] for r in results) == list(range(1, 101))
    ids = [r["id"] for r in results]
    assert len(set(ids)) == 100
    page = (await gql(second, MESSAGES, {"chat": chat, "first": 100}, ann.access_token))["data"]["messages"]
    assert [e["node"]["seq"] for e in page["edges"]] == list(range(1, 101))
    by_seq = {r["seq"]: r["text"] for r in results}
    assert all(e["node"]["text"] == by_seq[e["node"]["seq"]] for e in page["edges"])


async def test_a_retried_client_message_id_returns_the_original(api: str, workers: None) -> None:
    ann, bob, chat = await matched_pair(api)
    first = await send(api, ann, chat, "only once", cmid="retry-1")
    again = await send(api, ann, chat, "a different text", cmid="retry-1")
    assert again == first
    other = await send(api, bob, chat, "same client id, other sender", cmid="retry-1")
    assert other["seq"] == first["seq"] + 1


async def test_text_rules(api: str, workers: None) -> None:
    ann, _, chat = await matched_pair(api)
    for text, code in (("", "TEXT_TOO_SHORT"), (" \n\t ", "TEXT_TOO_SHORT"), ("x" * 2001, "TEXT_TOO_LONG"),
                       ("bell \x07", "INVALID_TEXT"), ("nul \x00", "INVALID_TEXT")):
        result = await send(api, ann, chat, text)
        assert (result["__typename"], result["code"], result["field"]) == ("InputError", code, "text"), text
    assert (await send(api, ann, chat, "ok", cmid="has space"))["field"] == "clientMessageId"
    sent = await send(api, ann, chat, "Cafe\u0301\r\nline two\ttab " + "é" * 1980)
    assert sent["text"] == "Café\nline two\ttab " + "é" * 1980  # NFC, 2,000 characters after it
    assert (await send(api, ann, chat, "e\u0301" * 2000))["__typename"] == "Message"  # 2,000 once composed


async def test_history_pages_by_seq(api: str, workers: None) -> None:
    ann, bob, chat = await matched_pair(api)
    for i in range(1, 26):
        await send(api, (ann, bob)[i % 2], chat, f"m{i}")
    latest = (await gql(api, MESSAGES, {"chat": chat, "last": 10}, ann.access_token))["data"]["messages"]
    assert [e["node"]["seq"] for e in latest["edges"]] == list(range(16, 26))
    assert latest["pageInfo"]["hasPreviousPage"] and not latest["pageInfo"]["hasNextPage"]
    older = (await gql(api, MESSAGES, {"chat": chat, "last": 10, "before": latest["pageInfo"]["startCursor"]},
                       ann.access_token))["data"]["messages"]
    assert [e["node"]["seq"] for e in older["edges"]] == list(range(6, 16))
    oldest = (await gql(api, MESSAGES, {"chat": chat, "last": 10, "before": older["pageInfo"]["startCursor"]},
                        ann.access_token))["data"]["messages"]
    assert [e["node"]["seq"] for e in oldest["edges"]] == list(range(1, 6))
    assert not oldest["pageInfo"]["hasPreviousPage"]
    forward = (await gql(api, MESSAGES, {"chat": chat, "first": 5, "after": oldest["edges"][2]["cursor"]},
                         ann.access_token))["data"]["messages"]
    assert [e["node"]["seq"] for e in forward["edges"]] == [4, 5, 6, 7, 8]
    assert forward["pageInfo"]["hasNextPage"]
    assert [e["node"]["fromMe"] for e in forward["edges"]] == [True, False, True, False, True]  # even: ann
    # A cursor of this chat is nobody else's, and not another list's.
    foreign = await gql(api, MESSAGES, {"chat": chat, "first": 5, "after": forward["edges"][0]["cursor"]},
                        bob.access_token)
    assert foreign["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    forged = await gql(api, MESSAGES, {"chat": chat, "last": 5, "before": "zz"}, ann.access_token)
    assert forged["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    assert forged["errors"][0]["extensions"].get("field") == "before", forged
    both = await gql(api, MESSAGES, {"chat": chat, "first": 5, "last": 5}, ann.access_token)
    assert both["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_strangers_cannot_tell_a_chat_exists(api_servers: list[str], workers: None) -> None:
    api = api_servers[0]
    ann, _, chat = await matched_pair(api)
    await send(api, ann, chat, "private")
    eve = await sign_up(api)
    operations: list[tuple[str, dict[str, Any], str]] = [
        (SEND, {"cmid": "eve-1", "text": "hi"}, "sendMessage"), (MARK_READ, {"seq": 1}, "markRead"),
        (TYPING, {}, "setTyping"), (MESSAGES, {}, "messages")]
    unknown = str(uuid.uuid4())
    answers: dict[str, list[str]] = {}
    for guess in (chat, unknown, "not-an-id", ann.id):
        # Whole answers, each with the guessed id blanked out: any difference would tell.
        seen: list[str] = []
        codes = []
        for document, extra, name in operations:
            answer = await gql(api, document, {"chat": guess, **extra}, eve.access_token)
            seen.append(json.dumps(answer, sort_keys=True).replace(guess, "<id>"))
            field = (answer.get("data") or {}).get(name)
            codes.append(field["code"] if field else answer["errors"][0]["extensions"]["code"])
        assert codes == ["NOT_FOUND"] * 4, (guess, seen)
        for protocol in (LEGACY_WS, TRANSPORT_WS):
            async with open_socket(api_servers[1], eve.access_token, protocol) as socket:
                await socket.start("s", CHAT_EVENTS, {"chat": guess, "after": 0})
                frame = await socket.frame("s")
                errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
                assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"], (guess, protocol, frame)
                seen.append(json.dumps(frame, sort_keys=True).replace(guess, "<id>"))
                if protocol == TRANSPORT_WS:  # queries and mutations run over this one too
                    for op_id, (document, extra, _) in enumerate(operations):
                        await socket.start(str(op_id), document, {"chat": guess, **extra})
                        payload = await socket.result(str(op_id))
                        seen.append(json.dumps(payload, sort_keys=True).replace(guess, "<id>"))
        answers[guess] = seen
    # Ann's chat answers a stranger exactly as an id that never existed does.
    assert answers[chat] == answers[unknown]
    # And nothing Eve tried reached the chat.
    page = (await gql(api, MESSAGES, {"chat": chat}, ann.access_token))["data"]["messages"]
    assert [e["node"]["text"] for e in page["edges"]] == ["private"]


async def test_receipts_typing_and_badges_reach_the_other_side(api_servers: list[str], workers: None) -> None:
    listening, sending = api_servers
    ann, bob, chat = await matched_pair(sending)
    async with open_socket(listening, ann.access_token) as socket:
        await subscribed(socket, "c", chat, None)
        await socket.start("me", MY_EVENTS)
        await asyncio.sleep(0.3)
        sent = await send(sending, bob, chat, "are you there?")
        live = (await socket.result("c"))["data"]["chatEvents"]
        assert live == {"__typename": "MessageSent", "message": {
            "id": sent["id"], "seq": 1, "senderId": bob.id, "fromMe": False, "text": "are you there?"}}
        badge = (await socket.result("me"))["data"]["myEvents"]
        assert badge == {"__typename": "NewMessage", "message": {"chatId": chat, "seq": 1, "fromMe": False,
                                                                 "text": "are you there?"}}
        assert (await gql(sending, TYPING, {"chat": chat}, bob.access_token))["data"]["setTyping"] == {
            "__typename": "Done"}
        again = (await gql(sending, TYPING, {"chat": chat}, bob.access_token))["data"]["setTyping"]
        assert again == {"__typename": "LimitError", "code": "RATE_LIMITED"}
        typing = (await socket.result("c"))["data"]["chatEvents"]
        assert typing == {"__typename": "Typing", "chatId": chat, "userId": bob.id, "expiresInSeconds": 5}
        # Read on another of ann's devices: this one (and bob's) hears the receipt.
        read = (await gql(sending, MARK_READ, {"chat": chat, "seq": 99}, ann.access_token))["data"]["markRead"]
        assert read == {"__typename": "ReadState", "upToSeq": 1}  # never past the last message
        receipt = (await socket.result("c"))["data"]["chatEvents"]
        assert receipt == {"__typename": "ReadReceipt", "chatId": chat, "userId": ann.id, "upToSeq": 1}


@pytest.mark.parametrize("how", ["unmatch", "block", "delete"])
async def test_an_ended_match_closes_its_chat(api_servers: list[str], workers: None, how: str) -> None:
    listening, acting = api_servers
    ann, bob, chat = await matched_pair(acting)
    await send(acting, ann, chat, "before")
    async with open_socket(listening, bob.access_token, LEGACY_WS) as legacy, \
            open_socket(listening, bob.access_token, TRANSPORT_WS) as current:
        for socket in (legacy, current):
            await socket.start("c", CHAT_EVENTS, {"chat": chat, "after": 0})
            assert (await socket.result("c"))["data"]["chatEvents"]["message"]["seq"] == 1
        if how == "unmatch":
            await gql(acting, UNMATCH, {"id": chat}, ann.access_token)
        elif how == "block":
            await gql(acting, BLOCK, {"id": bob.id}, ann.access_token)
        else:
            await gql(acting, 'mutation($p: String!) { deleteAccount(password: $p) { __typename } }',
                      {"p": ann.password}, ann.access_token)
        for socket in (legacy, current):
            closed = (await socket.result("c"))["data"]["chatEvents"]
            assert closed == {"__typename": "ChatClosed", "chatId": chat}
            assert (await socket.frame("c"))["type"] == "complete"
    refused = await send(acting, bob, chat, "after")
    assert (refused["__typename"], refused["code"]) == ("StateError", "CHAT_CLOSED")
    gone = await gql(acting, MESSAGES, {"chat": chat}, bob.access_token)
    assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    async with open_socket(listening, bob.access_token) as socket:  # a late subscriber learns it too
        await socket.start("c", CHAT_EVENTS, {"chat": chat, "after": 0})
        assert (await socket.result("c"))["data"]["chatEvents"]["__typename"] == "ChatClosed"
        assert (await socket.frame("c"))["type"] == "complete"


async def test_matches_show_the_last_message_and_unread_count(api: str, workers: None) -> None:
    query = "query { matches { edges { node { chatId unreadCount lastMessage { seq text fromMe } } } } }"
    ann, bob, chat = await matched_pair(api)

    async def ann_sees() -> dict[str, Any]:
        node: dict[str, Any] = (await gql(api, query, {}, ann.access_token))["data"]["matches"]["edges"][0]["node"]
        return node

    assert await ann_sees() == {"chatId": chat, "unreadCount": 0, "lastMessage": None}
    for i in range(3):
        await send(api, bob, chat, f"hey {i}")
    assert await ann_sees() == {"chatId": chat, "unreadCount": 3,
                                "lastMessage": {"seq": 3, "text": "hey 2", "fromMe": False}}
    await gql(api, MARK_READ, {"chat": chat, "seq": 2}, ann.access_token)
    assert (await ann_sees())["unreadCount"] == 1
    await send(api, ann, chat, "answer")  # answering reads what came before
    assert await ann_sees() == {"chatId": chat, "unreadCount": 0,
                                "lastMessage": {"seq": 4, "text": "answer", "fromMe": True}}
