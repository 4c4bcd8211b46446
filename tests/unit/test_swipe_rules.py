import asyncio
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import pytest

from domain import swipes
from domain.errors import Code, DomainError, InputError, LimitReached, NotFound
from domain.events import MatchEnded
from domain.ids import new_id
from domain.model import Gender, User, Visibility
from domain.swipes import Direction, Limits, Match, Quota, ReportReason, Swipe, SwipeDeps, quota_refused
from infra.swipe_queue import decode, encode
from tests.unit.fakes import FakeUsers, RecordedEvents

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LIKE, DISLIKE = Direction.LIKE, Direction.DISLIKE


class FakeQueue:
    """Pending swipes per user and target (None: an undo still on its way), plus each user's last swipe."""

    def __init__(self) -> None:
        self.entries: dict[uuid.UUID, dict[uuid.UUID, Swipe | None]] = {}
        self.lasts: dict[uuid.UUID, Swipe] = {}
        self.quotas = FakeQuotas()  # in the queue's own atomic step, as in the Redis queue
        self.fail: BaseException | None = None  # raised by the next enqueue
        self.racing: list[Swipe] = []  # land just before the next enqueue, as a concurrent request would

    def stored(self, swipe: Swipe) -> Swipe:
        return swipe

    @staticmethod
    def token(swipe: Swipe) -> str:
        return f"{swipe.target_id}:{round(swipe.at.timestamp() * 1000)}"

    async def enqueue(self, swipe: Swipe, quotas: Sequence[Quota], written: Swipe | None) -> Swipe:
        for other in self.racing:
            self._put(other)
        self.racing = []
        if self.fail is not None:
            raise self.fail
        mine = self.entries.get(swipe.user_id, {})
        if swipe.target_id in mine:
            current = mine[swipe.target_id]
            if current is not None:
                return current
        elif written is not None:
            return written
        for quota in quotas:  # all checked before any is taken: a refusal takes nothing
            wait = self.quotas.wait(swipe.user_id, quota.kind, quota.limit, quota.window, swipe.at)
            if wait:
                raise quota_refused(quota.kind, wait)
        for quota in quotas:
            await self.quotas.take(swipe.user_id, quota.kind, quota.limit, quota.window, swipe.at, self.token(swipe))
        self._put(swipe)
        return swipe  # as the Redis queue does: the argument itself when it was accepted

    def _put(self, swipe: Swipe) -> None:
        kept = self.stored(swipe)
        self.entries.setdefault(swipe.user_id, {})[swipe.target_id] = kept
        self.lasts[swipe.user_id] = kept

    async def pending(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe | None]:
        mine = self.entries.get(user_id, {})
        return {t: mine[t] for t in targets if t in mine}

    async def last(self, user_id: uuid.UUID) -> Swipe | None:
        return self.lasts.get(user_id)

    async def enqueue_undo(self, last: Swipe, at: datetime, quotas: Sequence[str]) -> bool:
        if self.lasts.get(last.user_id) != last:
            return False
        for kind in quotas:
            await self.quotas.give_back(last.user_id, kind, self.token(last))
        del self.lasts[last.user_id]
        self.entries.setdefault(last.user_id, {})[last.target_id] = None
        return True

    def write_to(self, relations: "FakeRelations") -> None:
        """What the swipe writer does: apply pending entries and drop them (the last swipe stays)."""
        for user_id, mine in self.entries.items():
            for target, entry in mine.items():
                if entry is None:
                    relations.written.pop((user_id, target), None)
                else:
                    relations.written[(user_id, target)] = entry
        self.entries.clear()


class WireQueue(FakeQueue):
    """Keeps entries the way the Redis queue does: through its wire format, times to the millisecond."""

    def stored(self, swipe: Swipe) -> Swipe:
        entry = decode(encode(swipe))
        assert isinstance(entry, Swipe)
        return entry


@dataclass
class _Match:
    id: uuid.UUID
    a: uuid.UUID
    b: uuid.UUID
    created_at: datetime

    def seen_by(self, user_id: uuid.UUID) -> Match:
        return Match(self.id, user_id, self.b if user_id == self.a else self.a, self.created_at)


class FakeRelations:
    def __init__(self, users: FakeUsers) -> None:
        self.users = users
        self.written: dict[tuple[uuid.UUID, uuid.UUID], Swipe] = {}
        self.blocks: set[tuple[uuid.UUID, uuid.UUID]] = set()
        self.active: dict[uuid.UUID, _Match] = {}
        self.reports: list[tuple[uuid.UUID, uuid.UUID, str, str]] = []

    def add_match(self, a: uuid.UUID, b: uuid.UUID, at: datetime = NOW) -> uuid.UUID:
        match = _Match(new_id(), a, b, at)
        self.active[match.id] = match
        return match.id

    async def swipe_state(self, user_id: uuid.UUID, other_id: uuid.UUID
                          ) -> tuple[User | None, bool, Swipe | None]:
        return (await self.users.get(other_id), await self.blocked_either_way(user_id, other_id),
                self.written.get((user_id, other_id)))

    async def swipes(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe]:
        return {t: self.written[(user_id, t)] for t in targets if (user_id, t) in self.written}

    async def blocked_either_way(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool:
        return (user_id, other_id) in self.blocks or (other_id, user_id) in self.blocks

    async def matched(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool:
        return any({m.a, m.b} == {user_id, other_id} for m in self.active.values())

    async def end_match(self, user_id: uuid.UUID, match_id: uuid.UUID | None, other_id: uuid.UUID | None,
                        now: datetime) -> Match | None:
        for m in list(self.active.values()):
            mine = user_id in (m.a, m.b)
            if mine and (m.id == match_id or (other_id is not None and other_id in (m.a, m.b))):
                del self.active[m.id]
                return m.seen_by(user_id)
        return None

    async def block(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None:
        self.blocks.add((user_id, other_id))

    async def separate(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None:
        self.blocks |= {(user_id, other_id), (other_id, user_id)}

    async def report(self, user_id: uuid.UUID, other_id: uuid.UUID, reason: str, details: str,
                     now: datetime) -> None:
        self.reports.append((user_id, other_id, reason, details))

    async def matches(self, user_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None
                      ) -> list[Match]:
        mine = sorted((m for m in self.active.values() if user_id in (m.a, m.b)),
                      key=lambda m: (m.created_at, m.id), reverse=True)
        return [m.seen_by(user_id) for m in mine if before is None or (m.created_at, m.id) < before][:limit]

    async def end_all_matches(self, user_id: uuid.UUID, now: datetime) -> list[Match]:
        ended = [m for m in self.active.values() if user_id in (m.a, m.b)]
        for m in ended:
            del self.active[m.id]
        return [m.seen_by(user_id) for m in ended]

    async def super_likers(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        return [s.user_id for s in self.written.values() if s.target_id == user_id and s.super_like][:limit]


class FakeQuotas:
    """A rolling window of tokens per user and kind; taking a token already held is free."""

    def __init__(self) -> None:
        self.held: dict[tuple[uuid.UUID, str], dict[str, datetime]] = {}

    async def take(self, user_id: uuid.UUID, kind: str, limit: int, window: timedelta, now: datetime,
                   token: str) -> int:
        wait = 0 if token in self.held.get((user_id, kind), {}) else self.wait(user_id, kind, limit, window, now)
        if not wait:
            self.held[(user_id, kind)][token] = now
        return wait

    def wait(self, user_id: uuid.UUID, kind: str, limit: int, window: timedelta, now: datetime) -> int:
        held = self.held.setdefault((user_id, kind), {})
        for old in [t for t, at in held.items() if at <= now - window]:
            del held[old]
        if len(held) >= limit:
            return max(1, math.ceil((min(held.values()) + window - now).total_seconds()))
        return 0

    async def give_back(self, user_id: uuid.UUID, kind: str, token: str) -> None:
        self.held.get((user_id, kind), {}).pop(token, None)

    def used(self, user_id: uuid.UUID, kind: str, now: datetime, window: timedelta = timedelta(days=1)) -> int:
        return sum(at > now - window for at in self.held.get((user_id, kind), {}).values())


@dataclass
class World:
    users: FakeUsers
    queue: FakeQueue
    relations: FakeRelations
    events: RecordedEvents

    @property
    def quotas(self) -> FakeQuotas:
        return self.queue.quotas

    @property
    def deps(self) -> SwipeDeps:
        return SwipeDeps(self.users, self.queue, self.relations, self.events,
                         Limits(likes_per_day=3, super_likes_per_day=1, undo_window=timedelta(minutes=5)))

    async def person(self, visibility: Visibility = Visibility.VISIBLE) -> User:
        user_id = new_id()
        user = User(user_id, f"{user_id.hex}@example.com", "Someone", date(1990, 1, 1), Gender.WOMAN, NOW,
                    visibility=visibility)
        assert await self.users.create(user, "h:password123")
        return user

    async def swipe(self, user: User, target: User | str, direction: Direction = LIKE, super_like: bool = False,
                    now: datetime = NOW) -> Swipe:
        raw = target if isinstance(target, str) else str(target.id)
        done, _ = await swipes.swipe(self.deps, user.id, raw, direction, super_like, now)
        return done

    def used(self, user: User, now: datetime = NOW) -> tuple[int, int]:
        return self.quotas.used(user.id, "like", now), self.quotas.used(user.id, "super", now)


@pytest.fixture
def w() -> World:
    users = FakeUsers()
    return World(users, FakeQueue(), FakeRelations(users), RecordedEvents())


def ended_both(match_id: uuid.UUID, a: uuid.UUID, b: uuid.UUID) -> list[MatchEnded]:
    return [MatchEnded(a, match_id, b), MatchEnded(b, match_id, a)]


# Ids and who may be acted on.

async def test_malformed_ids_are_invalid_and_own_id_is_refused(w: World) -> None:
    ann = await w.person()
    for raw in ("", "not-an-id", str(ann.id)[:-1], str(ann.id) + "0", "{" + str(ann.id) + "}", "z" * 36):
        with pytest.raises(InputError) as bad:
            await w.swipe(ann, raw)
        assert (bad.value.code, bad.value.field) == (Code.INVALID_ID, "userId"), raw
        with pytest.raises(InputError) as bad_block:
            await swipes.block(w.deps, ann.id, raw, NOW)
        assert bad_block.value.code == Code.INVALID_ID
    for own in (str(ann.id), str(ann.id).upper()):
        for direction, super_like in ((LIKE, False), (DISLIKE, False), (LIKE, True)):
            with pytest.raises(InputError) as self_swipe:
                await w.swipe(ann, own, direction, super_like)
            assert self_swipe.value.code == Code.CANNOT_SWIPE_SELF
        for refused in (swipes.block(w.deps, ann.id, own, NOW),
                        swipes.report(w.deps, ann.id, own, ReportReason.SPAM, "", NOW)):
            with pytest.raises(InputError) as self_target:
                await refused
            assert self_target.value.code == Code.CANNOT_TARGET_SELF
    assert w.queue.entries == {} and w.used(ann) == (0, 0)


async def test_unknown_deleted_hidden_and_blocked_people_do_not_exist(w: World) -> None:
    ann, gone, hidden, blocked, blocker = [await w.person() for _ in range(5)]
    await w.users.delete(gone.id, NOW)
    await w.users.save_profile(replace(hidden, visibility=Visibility.HIDDEN), NOW)
    w.relations.blocks |= {(ann.id, blocked.id), (blocker.id, ann.id)}
    for target in (str(uuid.uuid4()), str(gone.id), str(hidden.id), str(blocked.id), str(blocker.id)):
        for direction, super_like in ((LIKE, False), (DISLIKE, False), (LIKE, True)):
            with pytest.raises(NotFound) as missing:
                await w.swipe(ann, target, direction, super_like)
            assert missing.value.code == Code.NOT_FOUND and missing.value.message == "Person not found"
    assert w.queue.entries == {} and w.used(ann) == (0, 0)
    for target in (str(uuid.uuid4()), str(gone.id), str(blocked.id), str(blocker.id)):
        with pytest.raises(NotFound):
            await swipes.block(w.deps, ann.id, target, NOW)
    for target in (str(uuid.uuid4()), str(gone.id)):
        with pytest.raises(NotFound):
            await swipes.report(w.deps, ann.id, target, ReportReason.SPAM, "", NOW)
    assert w.relations.reports == []
    # Anyone who still exists can be reported, blocked either way or not.
    for person in (blocked, blocker):
        await swipes.report(w.deps, ann.id, str(person.id), ReportReason.HARASSMENT, "", NOW)
    assert [r[1] for r in w.relations.reports] == [blocked.id, blocker.id]
    await swipes.block(w.deps, ann.id, str(hidden.id), NOW)  # hiding is from discovery, not from a block
    assert (ann.id, hidden.id) in w.relations.blocks


async def test_a_swipe_is_queued_and_returned_with_the_target(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    done, target = await swipes.swipe(w.deps, ann.id, str(bob.id), LIKE, False, NOW)
    assert done == Swipe(ann.id, bob.id, LIKE, False, NOW) and target == bob
    assert await w.queue.pending(ann.id, [bob.id]) == {bob.id: done} and await w.queue.last(ann.id) == done


async def test_swiping_the_same_person_again_changes_nothing_and_costs_nothing(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    first = await w.swipe(ann, bob, DISLIKE)
    for direction, super_like in ((LIKE, False), (LIKE, True), (DISLIKE, False)):
        assert await w.swipe(ann, bob, direction, super_like, NOW + timedelta(minutes=1)) == first
    assert w.used(ann) == (0, 0) and w.queue.entries[ann.id] == {bob.id: first}
    liked = await w.swipe(ann, cat, LIKE, True)
    w.queue.write_to(w.relations)  # once written, the relation table answers for it
    assert await w.queue.pending(ann.id, [cat.id]) == {}
    assert await w.swipe(ann, cat, LIKE, True, NOW + timedelta(hours=1)) == liked
    assert await w.swipe(ann, bob, LIKE, False, NOW + timedelta(hours=1)) == first
    assert w.used(ann) == (1, 1) and w.queue.entries == {}


async def test_like_quota_is_a_rolling_window_and_dislikes_are_free(w: World) -> None:
    ann = await w.person()
    others = [await w.person() for _ in range(6)]
    for i, other in enumerate(others[:3]):
        await w.swipe(ann, other, LIKE, now=NOW + timedelta(hours=i))
    with pytest.raises(LimitReached) as over:
        await w.swipe(ann, others[3], LIKE, now=NOW + timedelta(hours=3))
    assert over.value.code == Code.QUOTA_EXCEEDED and over.value.message == "No likes left for now"
    assert over.value.retry_after_seconds == 21 * 3600  # when the first like leaves the day's window
    assert others[3].id not in w.queue.entries[ann.id]
    for other in others[3:]:
        assert (await w.swipe(ann, other, DISLIKE, now=NOW + timedelta(hours=3))).direction is DISLIKE
    assert w.used(ann) == (3, 0)
    late = await w.person()
    assert (await w.swipe(ann, late, LIKE, now=NOW + timedelta(days=1))).direction is LIKE


async def test_a_super_like_takes_both_quotas(w: World) -> None:
    ann, bob, cat, dan = await w.person(), await w.person(), await w.person(), await w.person()
    assert (await w.swipe(ann, bob, LIKE, True)).super_like
    assert w.used(ann) == (1, 1)
    with pytest.raises(LimitReached) as over:
        await w.swipe(ann, cat, LIKE, True, NOW + timedelta(hours=1))
    assert over.value.code == Code.QUOTA_EXCEEDED and over.value.retry_after_seconds == 23 * 3600
    assert over.value.message == "No super likes left for now"
    assert w.used(ann) == (1, 1)  # the like taken before the super like was refused went back
    await w.swipe(ann, cat, LIKE, now=NOW + timedelta(hours=1))
    await w.swipe(ann, dan, LIKE, now=NOW + timedelta(hours=1))
    eve, fay = await w.person(), await w.person()
    await w.swipe(ann, fay, LIKE, now=NOW + timedelta(days=1))  # the first like and super like are a day old
    with pytest.raises(LimitReached) as no_likes:
        await w.swipe(ann, eve, LIKE, True, NOW + timedelta(days=1))  # the super like is free, the likes are not
    assert no_likes.value.message == "No likes left for now"
    assert w.used(ann, NOW + timedelta(days=1)) == (3, 0)


@pytest.mark.parametrize("failure", [ConnectionError("queue away"), asyncio.CancelledError()])
async def test_super_like_gives_both_quotas_back_when_the_queue_raises(w: World, failure: BaseException) -> None:
    ann, bob = await w.person(), await w.person()
    w.queue.fail = failure
    with pytest.raises(type(failure)):
        await w.swipe(ann, bob, LIKE, True)
    assert w.used(ann) == (0, 0) and w.queue.entries == {}
    w.queue.fail = None
    assert (await w.swipe(ann, bob, LIKE, True)).super_like


async def test_a_concurrent_earlier_swipe_wins_and_the_quota_goes_back(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    earlier = Swipe(ann.id, bob.id, DISLIKE, False, NOW - timedelta(seconds=1))
    w.queue.racing = [earlier]
    assert await w.swipe(ann, bob, LIKE, True) == earlier
    assert w.used(ann) == (0, 0)
    liked = Swipe(ann.id, cat.id, LIKE, False, NOW - timedelta(seconds=1))
    w.queue.racing = [liked]  # the winner paid for its own like; the loser's is returned
    await w.quotas.take(ann.id, "like", 3, timedelta(days=1), liked.at, "the winning request")
    assert await w.swipe(ann, cat, LIKE, True) == liked
    assert w.used(ann) == (1, 0)


# Undo.

async def test_nothing_to_undo(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    with pytest.raises(DomainError) as empty:
        await swipes.undo_last(w.deps, ann.id, NOW)
    assert empty.value.code == Code.NOTHING_TO_UNDO
    await w.swipe(ann, bob, DISLIKE)
    with pytest.raises(DomainError) as late:
        await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=5, seconds=1))
    assert late.value.code == Code.NOTHING_TO_UNDO
    assert (await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=4)))[0].target_id == bob.id
    with pytest.raises(DomainError) as twice:
        await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=4))
    assert twice.value.code == Code.NOTHING_TO_UNDO
    await w.swipe(ann, cat, LIKE, now=NOW + timedelta(minutes=10))
    with pytest.raises(DomainError) as old:  # only the very last swipe can be undone
        await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=16))
    assert old.value.code == Code.NOTHING_TO_UNDO and w.used(ann) == (1, 0)


async def test_an_undo_across_a_block_takes_the_swipe_back_without_the_person(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    await w.swipe(ann, bob, LIKE)
    w.relations.blocks.add((bob.id, ann.id))  # Bob blocked Ann right after her like
    swipe, person = await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=1))
    assert swipe.target_id == bob.id and person is None


async def test_undo_refuses_when_the_last_swipe_changed_meanwhile(w: World) -> None:
    class LosingQueue(FakeQueue):
        async def last(self, user_id: uuid.UUID) -> Swipe | None:
            found = await super().last(user_id)
            self.lasts.pop(user_id, None)  # a concurrent undo got there first
            return found

    ann, bob = await w.person(), await w.person()
    w.queue = LosingQueue()
    await w.swipe(ann, bob, LIKE)
    with pytest.raises(DomainError) as lost:
        await swipes.undo_last(w.deps, ann.id, NOW)
    assert lost.value.code == Code.NOTHING_TO_UNDO
    assert w.used(ann) == (1, 0) and w.queue.entries[ann.id][bob.id] is not None


async def test_a_like_that_became_a_match_cannot_be_undone(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    liked = await w.swipe(ann, bob, LIKE)
    w.relations.add_match(bob.id, ann.id)
    with pytest.raises(DomainError) as matched:
        await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=1))
    assert matched.value.code == Code.ALREADY_MATCHED
    assert await w.queue.last(ann.id) == liked and w.used(ann) == (1, 0)


async def test_undo_gives_back_the_like_and_super_like(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    super_liked = await w.swipe(ann, bob, LIKE, True)
    undone, person = await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=1))
    assert (undone, person) == (super_liked, bob)
    assert w.used(ann) == (0, 0)
    assert await w.queue.pending(ann.id, [bob.id]) == {bob.id: None}
    again = await w.swipe(ann, bob, DISLIKE, now=NOW + timedelta(minutes=2))  # a fresh choice, not a no-op
    assert again == Swipe(ann.id, bob.id, DISLIKE, False, NOW + timedelta(minutes=2))
    await w.swipe(ann, cat, LIKE, now=NOW + timedelta(minutes=3))
    await w.swipe(ann, bob, LIKE, now=NOW + timedelta(minutes=4))  # still the dislike
    assert w.used(ann) == (1, 0)
    await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=5))  # the like of cat
    assert w.used(ann) == (0, 0)


async def test_undoing_a_dislike_gives_nothing_back(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    await w.swipe(ann, bob, LIKE, True)
    await w.swipe(ann, cat, DISLIKE)
    undone, _ = await swipes.undo_last(w.deps, ann.id, NOW)
    assert undone.target_id == cat.id and w.used(ann) == (1, 1)


async def test_undo_of_a_deleted_persons_swipe_has_no_person(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    await w.swipe(ann, bob, DISLIKE)
    await w.users.delete(bob.id, NOW)
    undone, person = await swipes.undo_last(w.deps, ann.id, NOW)
    assert undone.target_id == bob.id and person is None


async def test_undo_gives_back_the_like_with_the_redis_queues_millisecond_times(w: World) -> None:
    # The Redis queue keeps times to the millisecond, and real clocks have microseconds: the token
    # undo gives back must still be the one the swipe took.
    ann, bob = await w.person(), await w.person()
    w.queue = WireQueue()
    now = NOW + timedelta(microseconds=123_456)
    liked = await w.swipe(ann, bob, LIKE, True, now)
    assert liked.at == NOW + timedelta(milliseconds=123) and w.used(ann) == (1, 1)  # kept as the queue keeps it
    await swipes.undo_last(w.deps, ann.id, now + timedelta(seconds=10))
    assert w.used(ann) == (0, 0)


# What counts as swiped.

async def test_already_swiped_merges_pending_and_written(w: World) -> None:
    ann = await w.person()
    a, b, c, d, e = (uuid.uuid4() for _ in range(5))
    w.relations.written[(ann.id, a)] = Swipe(ann.id, a, LIKE, False, NOW)
    w.relations.written[(ann.id, b)] = Swipe(ann.id, b, DISLIKE, False, NOW)
    w.relations.written[(ann.id, d)] = Swipe(ann.id, d, DISLIKE, False, NOW)
    w.queue.entries[ann.id] = {b: None, c: Swipe(ann.id, c, LIKE, True, NOW),
                               d: Swipe(ann.id, d, LIKE, False, NOW + timedelta(seconds=1))}
    found = await swipes.already_swiped(w.deps, ann.id, [a, b, c, d, e])
    assert found == {a: w.relations.written[(ann.id, a)], c: w.queue.entries[ann.id][c],
                     d: w.queue.entries[ann.id][d]}  # pending is newer than written; b's undo hides it
    assert await swipes.already_swiped(w.deps, ann.id, []) == {}


async def test_an_undo_still_in_the_queue_hides_the_written_swipe(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    liked = await w.swipe(ann, bob, LIKE)
    w.queue.write_to(w.relations)
    assert await swipes.already_swiped(w.deps, ann.id, [bob.id]) == {bob.id: liked}
    await swipes.undo_last(w.deps, ann.id, NOW + timedelta(minutes=1))
    assert await swipes.already_swiped(w.deps, ann.id, [bob.id]) == {}
    assert w.relations.written[(ann.id, bob.id)] == liked  # not yet written
    fresh = await w.swipe(ann, bob, DISLIKE, now=NOW + timedelta(minutes=2))
    assert fresh.direction is DISLIKE
    w.queue.write_to(w.relations)
    assert await swipes.already_swiped(w.deps, ann.id, [bob.id]) == {bob.id: fresh}


# Matches, blocks, reports.

async def test_unmatch(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    match_id = w.relations.add_match(ann.id, bob.id)
    for raw in ("", "nope", str(match_id)[:-1], str(uuid.uuid4())):
        with pytest.raises(NotFound) as missing:
            await swipes.unmatch(w.deps, ann.id, raw, NOW)
        assert missing.value.message == "Match not found"
    with pytest.raises(NotFound):
        await swipes.unmatch(w.deps, cat.id, str(match_id), NOW)  # not hers
    assert w.events.events == []
    await swipes.unmatch(w.deps, bob.id, str(match_id), NOW)
    assert w.events.events == ended_both(match_id, bob.id, ann.id)
    assert await w.relations.blocked_either_way(ann.id, bob.id)  # they never meet again
    with pytest.raises(NotFound):
        await swipes.swipe(w.deps, ann.id, str(bob.id), Direction.LIKE, False, NOW)
    with pytest.raises(NotFound):
        await swipes.unmatch(w.deps, ann.id, str(match_id), NOW)
    assert len(w.events.events) == 2


async def test_block_ends_the_match_and_tells_both(w: World) -> None:
    ann, bob, cat = await w.person(), await w.person(), await w.person()
    match_id = w.relations.add_match(bob.id, ann.id)
    other_id = w.relations.add_match(bob.id, cat.id)
    await swipes.block(w.deps, ann.id, str(bob.id), NOW)
    assert w.events.events == ended_both(match_id, ann.id, bob.id)  # the same as an unmatch
    assert (ann.id, bob.id) in w.relations.blocks and set(w.relations.active) == {other_id}
    for viewer, other in ((ann, bob), (bob, ann)):
        with pytest.raises(NotFound):
            await w.swipe(viewer, other)
    await swipes.block(w.deps, ann.id, str(cat.id), NOW)
    assert len(w.events.events) == 2  # no match, nothing to tell


async def test_report_validates_details_then_records_and_blocks(w: World) -> None:
    ann, bob = await w.person(), await w.person()
    match_id = w.relations.add_match(ann.id, bob.id)
    for details, code in (("x" * (swipes.REPORT_DETAILS_MAX + 1), Code.TEXT_TOO_LONG),
                          ("x" * (swipes.REPORT_DETAILS_MAX * 4 + 1), Code.TEXT_TOO_LONG),
                          ("spam\x00", Code.INVALID_TEXT), ("bell \x07", Code.INVALID_TEXT),
                          ("line\rbreak", Code.INVALID_TEXT), ("evil \u202e txt", Code.INVALID_TEXT),
                          ("half \ud800", Code.INVALID_TEXT)):
        with pytest.raises(InputError) as bad:
            await swipes.report(w.deps, ann.id, str(bob.id), ReportReason.HARASSMENT, details, NOW)
        assert (bad.value.code, bad.value.field) == (code, "details"), details
    assert w.relations.reports == [] and w.relations.blocks == set() and w.events.events == []
    await swipes.report(w.deps, ann.id, str(bob.id), ReportReason.HARASSMENT, "  Cafe\u0301\n\tagain  ", NOW)
    assert w.relations.reports == [(ann.id, bob.id, "HARASSMENT", "Caf\u00e9\n\tagain")]
    assert (ann.id, bob.id) in w.relations.blocks
    assert w.events.events == ended_both(match_id, ann.id, bob.id)
    cat = await w.person()
    await swipes.report(w.deps, ann.id, str(cat.id), ReportReason.OTHER, "y" * swipes.REPORT_DETAILS_MAX, NOW)
    assert w.relations.reports[-1][2:] == ("OTHER", "y" * swipes.REPORT_DETAILS_MAX)


async def test_account_deleted_ends_every_match_and_tells_each_side(w: World) -> None:
    ann, bob, cat, dan = [await w.person() for _ in range(4)]
    with_bob = w.relations.add_match(ann.id, bob.id)
    with_cat = w.relations.add_match(cat.id, ann.id, NOW + timedelta(hours=1))
    between_others = w.relations.add_match(bob.id, dan.id)
    await swipes.account_deleted(w.deps, ann.id, NOW)
    assert sorted(w.events.events, key=repr) == sorted(
        ended_both(with_bob, ann.id, bob.id) + ended_both(with_cat, ann.id, cat.id), key=repr)
    assert set(w.relations.active) == {between_others}
    await swipes.account_deleted(w.deps, ann.id, NOW)
    assert len(w.events.events) == 4
