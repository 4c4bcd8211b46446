import datetime as dt
from typing import Annotated

import strawberry

from domain.swipes import Direction, ReportReason
from schema.accounts import DoneGQL, PersonGQL
from schema.errors import InputErrorGQL, LimitErrorGQL, NotFoundErrorGQL, StateErrorGQL

SwipeDirectionGQL = strawberry.enum(Direction, name="SwipeDirection")
ReportReasonGQL = strawberry.enum(ReportReason, name="ReportReason")


@strawberry.type(name="Swipe")
class SwipeGQL:
    person: PersonGQL | None = strawberry.field(description="Null if that person is gone since.")
    direction: Direction
    super_like: bool
    swiped_at: dt.datetime


@strawberry.type(name="Match", description="Two people who liked each other; its id is also their chat's id.")
class MatchGQL:
    id: strawberry.ID
    person: PersonGQL
    created_at: dt.datetime


@strawberry.type(name="PageInfo")
class PageInfoGQL:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(name="MatchEdge")
class MatchEdgeGQL:
    cursor: str
    node: MatchGQL


@strawberry.type(name="MatchConnection")
class MatchConnectionGQL:
    edges: list[MatchEdgeGQL]
    page_info: PageInfoGQL


@strawberry.type(name="MatchCreated", description="Someone you liked liked you back.")
class MatchCreatedGQL:
    match: MatchGQL


@strawberry.type(name="MatchEnded", description="A match ended (unmatched, blocked or deleted): drop it and its chat.")
class MatchEndedGQL:
    match_id: strawberry.ID


SwipeResult = Annotated[
    SwipeGQL | InputErrorGQL | NotFoundErrorGQL | LimitErrorGQL | StateErrorGQL, strawberry.union("SwipeResult")
]
RelationResult = Annotated[DoneGQL | InputErrorGQL | NotFoundErrorGQL, strawberry.union("RelationResult")]
