import uuid
from dataclasses import replace
from datetime import datetime

from domain.events import UserEvent
from domain.model import Principal, Session, User


class FakeUsers:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, tuple[User, str]] = {}

    async def create(self, user: User, password_hash: str) -> bool:
        if any(u.email == user.email for u, _ in self.rows.values()):
            return False
        self.rows[user.id] = (user, password_hash)
        return True

    async def by_email(self, email: str) -> tuple[User, str] | None:
        return next((row for row in self.rows.values() if row[0].email == email), None)

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = self.rows.get(user_id)
        return None if row is None else row[0]

    async def get_many(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, User]:
        return {i: self.rows[i][0] for i in ids if i in self.rows}

    async def password_hash(self, user_id: uuid.UUID) -> str | None:
        row = self.rows.get(user_id)
        return None if row is None else row[1]

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        self.rows[user_id] = (self.rows[user_id][0], password_hash)

    async def save_profile(self, user: User, now: datetime) -> None:
        self.rows[user.id] = (user, self.rows[user.id][1])

    async def delete(self, user_id: uuid.UUID, now: datetime) -> None:
        self.rows.pop(user_id, None)


class FakeSessions:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, dict[str, object]] = {}

    async def create(self, session: Session, now: datetime) -> None:
        self.rows[session.id] = {"s": session, "prev": None, "revoked": False}

    async def rotate(self, user_id: uuid.UUID, session_id: uuid.UUID, old_hash: bytes, new_hash: bytes,
                     expires_at: datetime, now: datetime) -> bool:
        row = self.rows.get(session_id)
        if row is None or row["revoked"]:
            return False
        session = row["s"]
        assert isinstance(session, Session)
        if session.refresh_hash != old_hash or session.expires_at <= now:
            return False
        row["prev"], row["s"] = old_hash, replace(session, refresh_hash=new_hash, expires_at=expires_at)
        return True

    async def was_rotated_from(self, user_id: uuid.UUID, session_id: uuid.UUID, old_hash: bytes) -> bool:
        row = self.rows.get(session_id)
        return row is not None and row["prev"] == old_hash

    async def revoke(self, user_id: uuid.UUID, session_id: uuid.UUID | None, now: datetime) -> None:
        for sid, row in self.rows.items():
            session = row["s"]
            assert isinstance(session, Session)
            if session.user_id == user_id and session_id in (None, sid):
                row["revoked"] = True

    async def is_active(self, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime) -> bool:
        row = self.rows.get(session_id)
        return row is not None and not row["revoked"]


class PlainHasher:
    async def hash(self, password: str) -> str:
        return "h:" + password

    async def verify(self, password_hash: str, password: str) -> bool:
        return password_hash == "h:" + password

    async def verify_nothing(self, password: str) -> None:
        return None

    def needs_rehash(self, password_hash: str) -> bool:
        return False


class PlainTokens:
    def issue(self, principal: Principal, now: datetime) -> tuple[str, datetime]:
        return f"{principal.user_id}|{principal.session_id}|{principal.session_expires_at.isoformat()}", now

    def verify(self, token: str, now: datetime) -> Principal:
        user, session, expires = token.split("|")
        return Principal(uuid.UUID(user), uuid.UUID(session), datetime.fromisoformat(expires))


class RecordedEvents:
    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    async def publish(self, event: UserEvent) -> None:
        self.events.append(event)
