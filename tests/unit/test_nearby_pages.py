"""Paging through a stored list: who is left out as of each page, in order, and how many reads that takes."""
import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from domain.errors import Code, InputError
from domain.model import Discovery, Gender, User, Visibility
from domain.nearby import NearbyDeps, _page, _position
from domain.ranking import Ranked
from domain.swipes import Direction, Swipe
from infra.buckets import _HEAD, _RECORD, decode_list, encode_list

VIEWER = uuid.UUID(int=1, version=4)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def swipe(target: uuid.UUID) -> Swipe:
    return Swipe(VIEWER, target, Direction.DISLIKE, False, NOW)


def user(user_id: uuid.UUID, visibility: Visibility = Visibility.VISIBLE) -> User:
    return User(id=user_id, email="", display_name="Someone", birth_date=date(1995, 1, 1), gender=Gender.WOMAN,
                created_at=NOW, bio="", show_me=frozenset(Gender), interest_tags=(), discovery=Discovery(),
                visibility=visibility, show_activity=True)


class World:
    """One viewer's stored list and relations, as the ports would answer for them."""

    def __init__(self, ranked: list[Ranked]) -> None:
        self.stored = {"the-list": encode_list(ranked)}
        self.people = {r.user_id: user(r.user_id) for r in ranked}
        self.queued: dict[uuid.UUID, Swipe | None] = {}  # None: an undo still queued
        self.written: dict[uuid.UUID, Swipe] = {}
        self.blocked: set[uuid.UUID] = set()
        self.reads = 0

    async def read(self, viewer: uuid.UUID, list_id: str, start: int, count: int
                   ) -> tuple[list[Ranked], int] | None:
        self.reads += 1
        blob = self.stored.get(list_id, b"") if viewer == VIEWER else b""
        first = _HEAD + start * _RECORD
        return decode_list(blob[:_HEAD], blob[first:first + count * _RECORD])

    async def pending(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe | None]:
        return {t: self.queued[t] for t in targets if t in self.queued}

    async def page_people(self, user_id: uuid.UUID, others: Sequence[uuid.UUID]
                          ) -> tuple[set[uuid.UUID], set[uuid.UUID], dict[uuid.UUID, User]]:
        return (set(self.written) & set(others), self.blocked & set(others),
                {i: self.people[i] for i in others if i in self.people})

    def deps(self) -> NearbyDeps:
        swipes: Any = type("SwipePorts", (), {"queue": self, "relations": self, "users": self})()
        return cast(NearbyDeps, type("Ports", (), {"swipes": swipes, "lists": self, "exclusions": self,
                                                    "cursor_key": b"k" * 32})())


def ranked(n: int) -> list[Ranked]:
    return [Ranked(uuid.UUID(int=1000 + i, version=4), i % 4, (), False, False, 0.0) for i in range(n)]


async def every_page(world: World, size: int) -> list[uuid.UUID]:
    deps = world.deps()
    page = await _page(deps, VIEWER, "the-list", 0, size, None)
    shown = [c.person.id for c in page.candidates]
    while page.has_next:
        assert page.end_cursor is not None
        _, start = _position(deps.cursor_key, page.end_cursor)
        page = await _page(deps, VIEWER, "the-list", start, size, None)
        shown += [c.person.id for c in page.candidates]
    return shown


def test_each_page_leaves_out_who_was_swiped_blocked_hidden_or_deleted_by_then() -> None:
    entries = ranked(120)
    ids = [e.user_id for e in entries]
    world = World(entries)
    world.written = {i: swipe(i) for i in ids[5:10]}
    world.queued = {ids[11]: swipe(ids[11]), ids[6]: None}  # a queued swipe; an undo of a written one
    world.blocked = {ids[12]}
    world.people[ids[13]] = user(ids[13], Visibility.HIDDEN)
    del world.people[ids[14]]  # deleted
    left_out = set(ids[5:10]) - {ids[6]} | set(ids[11:15])
    assert asyncio.run(every_page(world, 20)) == [i for i in ids if i not in left_out]


def test_a_list_swiped_through_already_costs_few_reads() -> None:
    entries = ranked(1000)
    world = World(entries)
    world.written = {e.user_id: swipe(e.user_id) for e in entries[:700]}
    page = asyncio.run(_page(world.deps(), VIEWER, "the-list", 0, 20, None))
    assert [c.person.id for c in page.candidates] == [e.user_id for e in entries[700:720]]
    assert page.has_next and world.reads <= 5


def test_the_end_of_a_list_and_a_list_that_is_not_there() -> None:
    world = World(ranked(3))
    assert len(asyncio.run(every_page(world, 2))) == 3
    for viewer, list_id in ((VIEWER, "another-list"), (uuid.UUID(int=2, version=4), "the-list")):
        with pytest.raises(InputError) as refused:
            asyncio.run(_page(world.deps(), viewer, list_id, 0, 2, None))
        assert refused.value.code == Code.INVALID_CURSOR
