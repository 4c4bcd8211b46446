import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID
from broadcaster import Broadcast
from redis.exceptions import ConnectionError as RedisConnectionError

from domain.errors import Code, DomainError
from domain.events import MatchCreated, MatchEnded, UserEvent
from infra.events import UserChannels, decode, encode


def test_match_events_are_the_json_they_always_were() -> None:
    for kind, cls in (("match_created", MatchCreated), ("match_ended", MatchEnded)):
        for ids in ([uuid.uuid4() for _ in range(3)], [PgUUID(str(uuid.uuid4())) for _ in range(3)]):
            event = cls(*ids)
            assert encode(event) == json.dumps({"type": kind, "user": str(ids[0]), "match": str(ids[1]),
                                                "other": str(ids[2])})
            assert decode(encode(event)) == event


def test_a_match_carries_its_moment_to_both_sides() -> None:
    at = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    event = MatchCreated(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), at)
    assert json.loads(encode(event))["at"] == round(at.timestamp() * 1000)
    assert decode(encode(event)) == event


class OneByOne:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def publish(self, channel: str, message: Any) -> None:
        self.sent.append((channel, message))


class AllAtOnce(OneByOne):
    async def publish_many(self, messages: list[tuple[str, str]]) -> None:
        self.sent.append(("many", json.dumps(messages)))


async def test_publish_many_sends_what_publish_would_in_order() -> None:
    events: list[UserEvent] = [MatchCreated(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
    each, together = OneByOne(), AllAtOnce()
    for event in events:
        await UserChannels(cast(Broadcast, each), "p:").publish(event)
    fallback = OneByOne()
    await UserChannels(cast(Broadcast, fallback), "p:").publish_many(events)
    await UserChannels(cast(Broadcast, together), "p:").publish_many(events)
    assert fallback.sent == each.sent
    assert together.sent == [("many", json.dumps(each.sent))]
    assert [channel for channel, _ in each.sent] == [f"p:{{u:{e.user_id}}}:events" for e in events]


class RedisAway:
    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[None]:
        raise RedisConnectionError("Redis pub/sub connection is down, reconnecting")
        yield


async def test_redis_away_while_subscribing_answers_unavailable_not_bad_input() -> None:
    with pytest.raises(DomainError) as raised:
        async with UserChannels(cast(Broadcast, RedisAway()), "p:").subscribe(uuid.uuid4()):
            pass
    assert raised.value.code is Code.UNAVAILABLE
