import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from domain.accounts import display_name
from domain.errors import Code, InputError, NotFound
from domain.events import ProfileChanged
from domain.model import MIN_AGE, Discovery, Gender, User, Visibility
from domain.ports import EventPublisher, UserRepo
from domain.tags import normalise_tags
from domain.text import clean_text

BIO_MAX = 500
MAX_DISTANCE_KM = 500
MAX_AGE_FILTER = 99


@dataclass(frozen=True)
class ProfileChanges:
    """Fields left as None stay as they are."""

    display_name: str | None = None
    bio: str | None = None
    gender: Gender | None = None
    show_me: list[Gender] | None = None
    interest_tags: list[str] | None = None
    age_min: int | None = None
    age_max: int | None = None
    max_distance_km: int | None = None
    visibility: Visibility | None = None
    show_activity: bool | None = None
    show_read_receipts: bool | None = None


def apply_changes(user: User, ch: ProfileChanges) -> User:
    updated = user
    if ch.display_name is not None:
        updated = replace(updated, display_name=display_name(ch.display_name))
    if ch.bio is not None:
        updated = replace(updated, bio=clean_text(ch.bio, "bio", max_len=BIO_MAX, multiline=True))
    if ch.gender is not None:
        updated = replace(updated, gender=ch.gender)
    if ch.show_me is not None:
        if not ch.show_me:
            raise InputError(Code.INVALID_INPUT, "Choose at least one gender to be shown", "showMe")
        updated = replace(updated, show_me=frozenset(ch.show_me))
    if ch.interest_tags is not None:
        updated = replace(updated, interest_tags=tuple(normalise_tags(ch.interest_tags)))
    if ch.visibility is not None:
        updated = replace(updated, visibility=ch.visibility)
    if ch.show_activity is not None:
        updated = replace(updated, show_activity=ch.show_activity)
    if ch.show_read_receipts is not None:
        updated = replace(updated, show_read_receipts=ch.show_read_receipts)
    return replace(updated, discovery=_discovery(updated.discovery, ch))


def _discovery(current: Discovery, ch: ProfileChanges) -> Discovery:
    age_min = current.age_min if ch.age_min is None else ch.age_min
    age_max = current.age_max if ch.age_max is None else ch.age_max
    if not MIN_AGE <= age_min <= age_max <= MAX_AGE_FILTER:
        raise InputError(
            Code.INVALID_AGE_RANGE, f"Age range must satisfy {MIN_AGE} <= min <= max <= {MAX_AGE_FILTER}",
            "ageMin" if ch.age_min is not None else "ageMax",
        )
    distance = current.max_distance_km if ch.max_distance_km is None else ch.max_distance_km
    if not 1 <= distance <= MAX_DISTANCE_KM:
        raise InputError(Code.INVALID_DISTANCE, f"Maximum distance must be 1 to {MAX_DISTANCE_KM} km",
                         "maxDistanceKm")
    return Discovery(age_min, age_max, distance)


async def update_profile(
    users: UserRepo, events: EventPublisher, user_id: uuid.UUID, changes: ProfileChanges, now: datetime
) -> User:
    user = await users.get(user_id)
    if user is None:
        raise NotFound("Account")
    updated = apply_changes(user, changes)
    if updated != user:
        await users.save_profile(updated, now)
        await events.publish(ProfileChanged(user.id))
    return updated
