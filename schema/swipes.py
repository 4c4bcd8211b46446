import datetime as dt
import uuid
from typing import Annotated

import strawberry

from domain.presence import Presence
from domain.swipes import Direction, ReportReason
from resolvers.context import Info
from resolvers.presence import match_presence
from schema.accounts import DoneGQL, PersonGQL
from schema.chats import MessageGQL
from schema.errors import InputErrorGQL, LimitErrorGQL, NotFoundErrorGQL, StateErrorGQL
from schema.presence import PresenceGQL

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

    @strawberry.field(description="The chat of this match (sendMessage, messages, chatEvents): the match id.")
    def chat_id(self) -> strawberry.ID:
        return self.id

    @strawberry.field(description="The newest message of its chat; null before the first.")
    async def last_message(self, info: Info) -> MessageGQL | None:
        principal = await info.context.require_user()
        last, _ = await info.context.loaders.chat_summaries.load((uuid.UUID(self.id), principal.user_id))
        return None if last is None else MessageGQL.from_domain(last, principal.user_id)

    @strawberry.field(description="Messages after your read position (markRead) and after your own last message.")
    async def unread_count(self, info: Info) -> int:
        principal = await info.context.require_user()
        _, unread = await info.context.loaders.chat_summaries.load((uuid.UUID(self.id), principal.user_id))
        return unread

    @strawberry.field(graphql_type=PresenceGQL | None,
                      description="Whether the other person is online, else when they last were, in bands;"
                                  " null when they hide their activity (showActivity).")
    async def presence(self, info: Info) -> Presence | None:
        return await match_presence(info, uuid.UUID(self.person.id))


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
