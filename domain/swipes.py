import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from domain.errors import Code, DomainError, InputError, LimitReached, NotFound
from domain.events import MatchEnded
from domain.ids import parse_id
from domain.model import User, Visibility
from domain.ports import EventPublisher, UserRepo
from domain.text import clean_text


class Direction(str, Enum):
    LIKE = "LIKE"
    DISLIKE = "DISLIKE"


@dataclass(frozen=True)
class Swipe:
    user_id: uuid.UUID
    target_id: uuid.UUID
    direction: Direction
    super_like: bool
    at: datetime


@dataclass(frozen=True)
class Undo:
    user_id: uuid.UUID
    target_id: uuid.UUID
    at: datetime


SwipeEntry = Swipe | Undo


@dataclass(frozen=True)
class Match:
    id: uuid.UUID
    user_id: uuid.UUID  # the viewer's side of it
    other_id: uuid.UUID
    created_at: datetime


@dataclass(frozen=True)
class Limits:
    likes_per_day: int = 100
    super_likes_per_day: int = 1
    undo_window: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Quota:
    kind: str
    limit: int
    window: timedelta = timedelta(days=1)


class SwipeQueue(Protocol):
    """Accepted swipes on their way to the relation table; answers for them until they are written."""

    # One atomic step: the pending swipe for that person if there is one; else `written` unless an
    # undo of it is pending; else it takes every quota (raising LimitReached for the first one that
    # is short) and appends the swipe.
    async def enqueue(self, swipe: Swipe, quotas: Sequence[Quota], written: Swipe | None) -> Swipe: ...
    async def pending(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe | None]: ...
    async def last(self, user_id: uuid.UUID) -> Swipe | None: ...
    # False: no longer the last swipe. Gives back what the swipe took of the named quotas.
    async def enqueue_undo(self, last: Swipe, at: datetime, quotas: Sequence[str]) -> bool: ...


def quota_refused(kind: str, wait_seconds: int) -> LimitReached:
    what = "super likes" if kind == "super" else "likes"
    return LimitReached(Code.QUOTA_EXCEEDED, f"No {what} left for now", wait_seconds)


class Relations(Protocol):
    # The person to swipe (None if there is none), whether either blocked the other, and the viewer's
    # written swipe on them: one lookup, the relation tables keyed by the viewer.
    async def swipe_state(self, user_id: uuid.UUID, other_id: uuid.UUID
                          ) -> tuple[User | None, bool, Swipe | None]: ...
    async def swipes(self, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe]: ...
    async def blocked_either_way(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool: ...
    async def matched(self, user_id: uuid.UUID, other_id: uuid.UUID) -> bool: ...
    async def end_match(self, user_id: uuid.UUID, match_id: uuid.UUID | None, other_id: uuid.UUID | None,
                        now: datetime) -> Match | None: ...
    async def block(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None: ...
    # Hides each from the other, as a block does, without saying that either blocked.
    async def separate(self, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None: ...
    async def report(self, user_id: uuid.UUID, other_id: uuid.UUID, reason: str, details: str,
                     now: datetime) -> None: ...
    async def matches(self, user_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None
                      ) -> list[Match]: ...
    async def end_all_matches(self, user_id: uuid.UUID, now: datetime) -> list[Match]: ...
    async def super_likers(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]: ...


class ChatCloser(Protocol):
    async def close(self, chat_id: uuid.UUID) -> None: ...


@dataclass(frozen=True)
class SwipeDeps:
    users: UserRepo
    queue: SwipeQueue
    relations: Relations
    events: EventPublisher
    limits: Limits
    chats: ChatCloser | None = None  # a match's chat ends with it


def _target_id(viewer: uuid.UUID, raw_id: str, self_code: Code = Code.CANNOT_SWIPE_SELF) -> uuid.UUID:
    other_id = parse_id(raw_id)
    if other_id is None:
        raise InputError(Code.INVALID_ID, "Not a valid user id", "userId")
    if other_id == viewer:
        raise InputError(self_code, "That is you", "userId")
    return other_id


async def visible_other(deps: SwipeDeps, viewer: uuid.UUID, raw_id: str) -> User:
    """The person behind an id, if the viewer may act on them; otherwise they do not exist for them."""
    other_id = _target_id(viewer, raw_id, Code.CANNOT_TARGET_SELF)
    other = await deps.users.get(other_id)
    if other is None or await deps.relations.blocked_either_way(viewer, other_id):
        raise NotFound("Person")
    return other


async def already_swiped(deps: SwipeDeps, user_id: uuid.UUID, targets: list[uuid.UUID]) -> dict[uuid.UUID, Swipe]:
    # Read-your-writes: a swipe still in the queue counts, and an undo still in the queue un-counts.
    pending = await deps.queue.pending(user_id, targets)
    written = await deps.relations.swipes(user_id, [t for t in targets if t not in pending])
    found = {t: s for t, s in pending.items() if s is not None}
    return found | written


async def swipe(deps: SwipeDeps, user_id: uuid.UUID, raw_target: str, direction: Direction, super_like: bool,
                now: datetime) -> tuple[Swipe, User]:
    # Two round trips in all, for the most frequent write of the product: the person with the
    # relation (blocks and a written swipe) in one lookup, then one atomic step in the queue.
    target_id = _target_id(user_id, raw_target)
    target, blocked, written = await deps.relations.swipe_state(user_id, target_id)
    if target is None or target.visibility is Visibility.HIDDEN or blocked:
        raise NotFound("Person")
    quotas = []
    if direction is Direction.LIKE:
        quotas.append(Quota("like", deps.limits.likes_per_day))
    if super_like:
        quotas.append(Quota("super", deps.limits.super_likes_per_day))
    # Swiping the same person again changes nothing: the queue answers with the earlier swipe. The
    # queue keeps whole milliseconds, so the first answer is already what every later one will say.
    at = now.replace(microsecond=now.microsecond // 1000 * 1000)
    accepted = await deps.queue.enqueue(Swipe(user_id, target_id, direction, super_like, at), quotas, written)
    return accepted, target


async def undo_last(deps: SwipeDeps, user_id: uuid.UUID, now: datetime) -> tuple[Swipe, User | None]:
    last = await deps.queue.last(user_id)
    nothing = DomainError(Code.NOTHING_TO_UNDO, "There is no recent swipe to undo")
    if last is None or now - last.at > deps.limits.undo_window:
        raise nothing
    if last.direction is Direction.LIKE and await deps.relations.matched(user_id, last.target_id):
        raise DomainError(Code.ALREADY_MATCHED, "That like already became a match")
    given_back = (["like"] if last.direction is Direction.LIKE else []) + (["super"] if last.super_like else [])
    if not await deps.queue.enqueue_undo(last, now, given_back):
        raise nothing
    target = await deps.users.get(last.target_id)
    # The swipe is still theirs to take back, but across a block the other person is gone for them.
    if target is not None and await deps.relations.blocked_either_way(user_id, target.id):
        target = None
    return last, target


async def unmatch(deps: SwipeDeps, user_id: uuid.UUID, raw_match_id: str, now: datetime) -> None:
    match_id = parse_id(raw_match_id)
    ended = None if match_id is None else await deps.relations.end_match(user_id, match_id, None, now)
    if ended is None:
        raise NotFound("Match")
    # Final: they never meet again anywhere (profile, candidates, swipes), not only in the matches.
    await deps.relations.separate(user_id, ended.other_id, now)
    await _tell_both(deps, ended)


async def account_deleted(deps: SwipeDeps, user_id: uuid.UUID, now: datetime) -> None:
    # The other side of every match hears MatchEnded at once, as after an unmatch.
    for ended in await deps.relations.end_all_matches(user_id, now):
        await _tell_both(deps, ended)


async def block(deps: SwipeDeps, user_id: uuid.UUID, raw_id: str, now: datetime) -> None:
    other = await visible_other(deps, user_id, raw_id)
    await _block(deps, user_id, other.id, now)


async def _block(deps: SwipeDeps, user_id: uuid.UUID, other_id: uuid.UUID, now: datetime) -> None:
    await deps.relations.block(user_id, other_id, now)
    ended = await deps.relations.end_match(user_id, None, other_id, now)
    if ended is not None:
        await _tell_both(deps, ended)  # the same event as an unmatch: a block is not announced


REPORT_DETAILS_MAX = 2000


class ReportReason(str, Enum):
    SPAM = "SPAM"
    FAKE_PROFILE = "FAKE_PROFILE"
    HARASSMENT = "HARASSMENT"
    INAPPROPRIATE_CONTENT = "INAPPROPRIATE_CONTENT"
    UNDERAGE = "UNDERAGE"
    SCAM = "SCAM"
    OTHER = "OTHER"


async def report(deps: SwipeDeps, user_id: uuid.UUID, raw_id: str, reason: ReportReason, details: str,
                 now: datetime) -> None:
    text = clean_text(details, "details", max_len=REPORT_DETAILS_MAX, multiline=True)
    # Anyone who exists may be reported, blocked or not: a harasser who blocks first must not
    # escape a report that way.
    other = await deps.users.get(_target_id(user_id, raw_id, Code.CANNOT_TARGET_SELF))
    if other is None:
        raise NotFound("Person")
    await deps.relations.report(user_id, other.id, reason.value, text, now)
    await _block(deps, user_id, other.id, now)


async def _tell_both(deps: SwipeDeps, ended: Match) -> None:
    if deps.chats is not None:
        # Before the events: whoever hears MatchEnded can no longer send, and chat subscribers end.
        await deps.chats.close(ended.id)
    for side, other in ((ended.user_id, ended.other_id), (ended.other_id, ended.user_id)):
        await deps.events.publish(MatchEnded(side, ended.id, other))
