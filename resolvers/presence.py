import uuid

from domain.presence import Presence, presence_of
from resolvers.context import Info


async def match_presence(info: Info, other_id: uuid.UUID) -> Presence | None:
    # Only a match's own field calls this: whoever is not matched (or blocked, which ends the match)
    # has no way to ask. Hiding one's activity hides presence too: it is the same thing, finer.
    other = await info.context.loaders.users.load(other_id)
    if other is None or not other.show_activity:
        return None
    return presence_of(await info.context.loaders.sightings.load(other_id), info.context.ports.clock())
