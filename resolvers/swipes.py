import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import strawberry

from domain import swipes
from domain.cursors import decode_cursor, encode_cursor, page_size
from domain.errors import Code, DomainError, InputError
from domain.model import User
from domain.swipes import Direction, Match, ReportReason, Swipe
from resolvers.context import Info
from schema.accounts import DoneGQL, PersonGQL
from schema.errors import error_member
from schema.swipes import (
    MatchConnectionGQL,
    MatchEdgeGQL,
    MatchGQL,
    PageInfoGQL,
    RelationResult,
    SwipeGQL,
    SwipeResult,
)


async def _swipe(info: Info, user_id: strawberry.ID, direction: Direction, super_like: bool) -> SwipeResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        swipe, target = await swipes.swipe(ports.swipes, principal.user_id, user_id, direction, super_like,
                                           ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return _swipe_gql(info, swipe, target)


async def like(info: Info, user_id: strawberry.ID) -> SwipeResult:
    return await _swipe(info, user_id, Direction.LIKE, False)


async def dislike(info: Info, user_id: strawberry.ID) -> SwipeResult:
    return await _swipe(info, user_id, Direction.DISLIKE, False)


async def super_like(info: Info, user_id: strawberry.ID) -> SwipeResult:
    return await _swipe(info, user_id, Direction.LIKE, True)


async def undo_last_swipe(info: Info) -> SwipeResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        swipe, target = await swipes.undo_last(ports.swipes, principal.user_id, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return _swipe_gql(info, swipe, target)


def _swipe_gql(info: Info, swipe: Swipe, target: User | None) -> SwipeGQL:
    person = None if target is None else PersonGQL.from_domain(target, info.context.ports.clock().date())
    return SwipeGQL(person=person, direction=swipe.direction, super_like=swipe.super_like, swiped_at=swipe.at)


async def unmatch(info: Info, match_id: strawberry.ID) -> RelationResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        await swipes.unmatch(ports.swipes, principal.user_id, match_id, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return DoneGQL()


async def block(info: Info, user_id: strawberry.ID) -> RelationResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        await swipes.block(ports.swipes, principal.user_id, user_id, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return DoneGQL()


async def report(info: Info, user_id: strawberry.ID, reason: ReportReason, details: str = "") -> RelationResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        await swipes.report(ports.swipes, principal.user_id, user_id, reason, details, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return DoneGQL()


async def match_gql(info: Info, match: Match) -> MatchGQL | None:
    other = await info.context.loaders.users.load(match.other_id)
    if other is None:
        return None
    person = PersonGQL.from_domain(other, info.context.ports.clock().date())
    return MatchGQL(id=strawberry.ID(str(match.id)), person=person, created_at=match.created_at)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


async def matches(info: Info, first: int | None = 20, after: str | None = None) -> MatchConnectionGQL:
    principal = await info.context.require_user()
    ports = info.context.ports
    size = page_size(first)
    kind = f"matches:{principal.user_id}"  # a cursor works only for the list of whoever it was made for
    before = None
    if after is not None:
        micros, raw_id = decode_cursor(ports.cursor_key, kind, after)
        try:
            before = (EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(str(raw_id)))
        except (TypeError, ValueError, OverflowError):
            raise InputError(Code.INVALID_CURSOR, "Not a cursor of this list", "after") from None
    found = await ports.swipes.relations.matches(principal.user_id, size + 1, before)
    nodes = await asyncio.gather(*(match_gql(info, m) for m in found[:size]))  # one batched user load
    edges = [
        MatchEdgeGQL(cursor=encode_cursor(ports.cursor_key, kind, [(m.created_at - EPOCH) // _MICRO, str(m.id)]),
                     node=node)
        for m, node in zip(found[:size], nodes, strict=True) if node is not None
    ]
    end = edges[-1].cursor if edges else None
    return MatchConnectionGQL(edges=edges, page_info=PageInfoGQL(has_next_page=len(found) > size, end_cursor=end))
