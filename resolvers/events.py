from collections.abc import AsyncGenerator

from domain.events import ProfileChanged
from resolvers.context import Info
from schema.accounts import MeGQL
from schema.events import MyEvent, ProfileChangedGQL


async def my_events(info: Info) -> AsyncGenerator[MyEvent, None]:
    principal = await info.context.require_user()
    ports = info.context.ports
    async with ports.user_events.subscribe(principal.user_id) as events:
        async for event in events:
            if isinstance(event, ProfileChanged):
                # Loaded per event: a subscription's context lives as long as its connection.
                user = await ports.users.get(principal.user_id)
                if user is not None:
                    yield ProfileChangedGQL(me=MeGQL.from_domain(user, ports.clock().date()))
