import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol


class Presence(str, Enum):
    ONLINE = "ONLINE"
    TODAY = "TODAY"
    THIS_WEEK = "THIS_WEEK"
    LONGER = "LONGER"


@dataclass(frozen=True)
class Sighting:
    online: bool
    last_seen: datetime | None  # None: not within the time the board remembers


class PresenceBoard(Protocol):
    """Who holds a live connection, and when each person last did."""

    def connected(self, user_id: uuid.UUID) -> None: ...
    def disconnected(self, user_id: uuid.UUID) -> None: ...
    async def sightings(self, user_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, Sighting]: ...


def presence_of(sighting: Sighting, now: datetime) -> Presence:
    # Bands, never times: a match learns roughly how present someone is, not their schedule.
    if sighting.online:
        return Presence.ONLINE
    if sighting.last_seen is None:
        return Presence.LONGER
    ago = now - sighting.last_seen
    if ago <= timedelta(days=1):
        return Presence.TODAY
    if ago <= timedelta(days=7):
        return Presence.THIS_WEEK
    return Presence.LONGER
