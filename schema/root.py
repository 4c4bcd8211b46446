from collections.abc import AsyncGenerator

import strawberry

from resolvers import accounts, events, nearby, profiles, swipes
from resolvers.context import Info
from schema.accounts import (
    AuthResult,
    DeleteAccountResult,
    InterestTagGQL,
    MeGQL,
    PersonGQL,
    UpdateProfileResult,
)
from schema.events import MyEvent
from schema.nearby import CandidateConnectionGQL, MyLocationGQL, UpdateLocationResult
from schema.swipes import MatchConnectionGQL, RelationResult, SwipeResult


@strawberry.type
class Query:
    me: MeGQL = strawberry.field(resolver=accounts.me, description="The signed-in account.")
    person: PersonGQL | None = strawberry.field(
        resolver=accounts.person, description="Another user's public profile; NOT_FOUND if you may not see them."
    )
    interest_tags: list[InterestTagGQL] = strawberry.field(
        resolver=accounts.interest_tags, description="The catalogue of interest tags a profile may carry."
    )
    matches: MatchConnectionGQL = strawberry.field(
        resolver=swipes.matches, description="Your current matches, newest first."
    )
    nearby_candidates: CandidateConnectionGQL = strawberry.field(
        resolver=nearby.nearby_candidates,
        description="People near you who fit what you look for (and whose settings fit you), best first. "
        "LOCATION_REQUIRED until your position is known (from updateLocation, or from signing in).",
    )
    my_location: MyLocationGQL | None = strawberry.field(
        resolver=nearby.my_location, description="How discovery places you; null while unknown."
    )


@strawberry.type
class Mutation:
    sign_up: AuthResult = strawberry.mutation(resolver=accounts.sign_up)
    log_in: AuthResult = strawberry.mutation(resolver=accounts.log_in)
    refresh_token: AuthResult = strawberry.mutation(
        resolver=accounts.refresh_token, description="Trade a refresh token for new tokens (rotation)."
    )
    log_out: bool = strawberry.mutation(resolver=accounts.log_out, description="End this session.")
    log_out_everywhere: bool = strawberry.mutation(
        resolver=accounts.log_out_everywhere, description="End every session; open sockets close with 4401."
    )
    delete_account: DeleteAccountResult = strawberry.mutation(resolver=accounts.delete_account)
    update_profile: UpdateProfileResult = strawberry.mutation(resolver=profiles.update_profile)
    update_location: UpdateLocationResult = strawberry.mutation(
        resolver=nearby.update_location,
        description="Your device's position. It is rounded to a cell before it is stored; nobody sees it.",
    )
    like: SwipeResult = strawberry.mutation(
        resolver=swipes.like, description="Accepted at once; a mutual like arrives as MatchCreated on myEvents."
    )
    dislike: SwipeResult = strawberry.mutation(resolver=swipes.dislike)
    super_like: SwipeResult = strawberry.mutation(
        resolver=swipes.super_like, description="A like they see first among their candidates; daily quota."
    )
    undo_last_swipe: SwipeResult = strawberry.mutation(
        resolver=swipes.undo_last_swipe,
        description="Take back your last swipe within a few minutes, unless it matched.",
    )
    unmatch: RelationResult = strawberry.mutation(
        resolver=swipes.unmatch, description="Final: neither of you is shown to the other again."
    )
    block: RelationResult = strawberry.mutation(
        resolver=swipes.block, description="Each of you disappears for the other, everywhere."
    )
    report: RelationResult = strawberry.mutation(
        resolver=swipes.report, description="Sent to moderation; also blocks them."
    )


@strawberry.type(name="Mutation")
class BenchMutation(Mutation):
    # Only with NEWFRIENDS_BENCH_NOOP=1: the floor a mutation costs (HTTP, GraphQL, authentication),
    # against which bench/swipes.py measures the like path. Never part of the exported schema.
    @strawberry.mutation
    async def bench_noop(self, info: Info) -> bool:
        await info.context.require_user()
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Everything that happens to you, live.")
    async def my_events(self, info: strawberry.Info) -> AsyncGenerator[MyEvent, None]:
        async for event in events.my_events(info):
            yield event
