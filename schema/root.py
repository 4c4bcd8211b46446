from collections.abc import AsyncGenerator

import strawberry

from resolvers import accounts, events, profiles
from schema.accounts import (
    AuthResult,
    DeleteAccountResult,
    InterestTagGQL,
    MeGQL,
    PersonGQL,
    UpdateProfileResult,
)
from schema.events import MyEvent


@strawberry.type
class Query:
    me: MeGQL = strawberry.field(resolver=accounts.me, description="The signed-in account.")
    person: PersonGQL | None = strawberry.field(
        resolver=accounts.person, description="Another user's public profile; NOT_FOUND if you may not see them."
    )
    interest_tags: list[InterestTagGQL] = strawberry.field(
        resolver=accounts.interest_tags, description="The catalogue of interest tags a profile may carry."
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


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Everything that happens to you, live.")
    async def my_events(self, info: strawberry.Info) -> AsyncGenerator[MyEvent, None]:
        async for event in events.my_events(info):
            yield event
