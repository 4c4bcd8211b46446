import uuid
from dataclasses import dataclass
from datetime import datetime

from domain.chat import Message


@dataclass(frozen=True)
class SessionsEnded:
    """The named sessions (or all of them when None) can no longer be used: open sockets close."""

    user_id: uuid.UUID
    session_ids: tuple[uuid.UUID, ...] | None
    reason: str

    def covers(self, session_id: uuid.UUID) -> bool:
        return self.session_ids is None or session_id in self.session_ids


@dataclass(frozen=True)
class ProfileChanged:
    user_id: uuid.UUID


@dataclass(frozen=True)
class MatchCreated:
    user_id: uuid.UUID
    match_id: uuid.UUID
    other_id: uuid.UUID
    # Both sides must see the same moment; None only from a publisher that did not send it.
    created_at: datetime | None = None


@dataclass(frozen=True)
class MatchEnded:
    user_id: uuid.UUID
    match_id: uuid.UUID
    other_id: uuid.UUID


@dataclass(frozen=True)
class MessagePosted:
    """A message in one of the user's chats, theirs or the other person's."""

    user_id: uuid.UUID
    message: Message


@dataclass(frozen=True)
class PhotoChanged:
    """One of the user's photos changed state (processing, ready, rejected)."""

    user_id: uuid.UUID
    photo_id: uuid.UUID


UserEvent = SessionsEnded | ProfileChanged | MatchCreated | MatchEnded | MessagePosted | PhotoChanged
