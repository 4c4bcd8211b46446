import strawberry

from domain.presence import Presence

PresenceGQL = strawberry.enum(
    Presence, name="Presence",
    description="How present someone is, never when exactly: ONLINE (a live connection), else last online"
                " within a day (TODAY), a week (THIS_WEEK) or before (LONGER).",
)
