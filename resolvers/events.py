from collections.abc import AsyncGenerator

import strawberry

from domain.events import MatchCreated, MatchEnded, MessagePosted, PhotoChanged, ProfileChanged
from domain.swipes import Match
from resolvers.context import Info
from resolvers.photos import photo_gql
from resolvers.swipes import match_gql
from schema.accounts import MeGQL
from schema.chats import MessageGQL, NewMessageGQL
from schema.events import MyEvent, ProfileChangedGQL
from schema.photos import PhotoChangedGQL
from schema.swipes import MatchCreatedGQL, MatchEndedGQL


async def my_events(info: Info) -> AsyncGenerator[MyEvent, None]:
    principal = await info.context.require_user()
    ports = info.context.ports
    async with ports.user_events.subscribe(principal.user_id) as events:
        async for event in events:
            # Loaded per event: a subscription's context lives as long as its connection.
            if isinstance(event, ProfileChanged):
                user = await ports.users.get(principal.user_id)
                if user is not None:
                    yield ProfileChangedGQL(me=MeGQL.from_domain(user, ports.clock().date()))
            elif isinstance(event, MatchCreated):
                match = await match_gql(info, Match(event.match_id, event.user_id, event.other_id,
                                                   event.created_at or ports.clock()))
                if match is not None:
                    yield MatchCreatedGQL(match=match)
            elif isinstance(event, MatchEnded):
                yield MatchEndedGQL(match_id=strawberry.ID(str(event.match_id)))
            elif isinstance(event, MessagePosted):
                yield NewMessageGQL(message=MessageGQL.from_domain(event.message, principal.user_id))
            elif isinstance(event, PhotoChanged):
                photo = await ports.photos.photos.get(principal.user_id, event.photo_id)
                if photo is not None:  # deleted since
                    yield PhotoChangedGQL(photo=photo_gql(info, photo))
