import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum


class Gender(str, Enum):
    WOMAN = "WOMAN"
    MAN = "MAN"
    NONBINARY = "NONBINARY"


class Visibility(str, Enum):
    VISIBLE = "VISIBLE"
    HIDDEN = "HIDDEN"


MIN_AGE = 18
MAX_AGE = 120


@dataclass(frozen=True)
class Discovery:
    age_min: int = MIN_AGE
    age_max: int = 99
    max_distance_km: int = 50


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    display_name: str
    birth_date: date
    gender: Gender
    created_at: datetime
    bio: str = ""
    show_me: frozenset[Gender] = frozenset(Gender)
    interest_tags: tuple[str, ...] = ()
    discovery: Discovery = field(default_factory=Discovery)
    visibility: Visibility = Visibility.VISIBLE
    show_activity: bool = True  # False: never shown as "active recently", nor ranked by activity
    show_read_receipts: bool = True  # False: neither sends receipts nor sees the other side's


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    refresh_hash: bytes
    expires_at: datetime
    client_ip: str | None = None


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    session_id: uuid.UUID
    session_expires_at: datetime


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


def age_on(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
