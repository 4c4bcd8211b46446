import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from domain.cursors import cursors_along, decode_cursor, page_size
from domain.errors import Code, DomainError, InputError
from domain.geo import MAX_RADIUS_KM, Point, centre, cover, kept
from domain.ids import new_id
from domain.locations import LocationDeps
from domain.model import MIN_AGE, Gender, User, Visibility
from domain.profiles import MAX_AGE_FILTER
from domain.ranking import Listing, Ranked, Wanted, rank
from domain.swipes import SwipeDeps

# Enough people for days of swiping; the nearest cells are read first, so a dense city stops early.
MAX_POOL = 3000
CELLS_PER_READ = 32
LIST_TTL = timedelta(hours=6)
MAX_CHUNK = 800  # people checked at once while skipping those left out


class Buckets(Protocol):
    async def listings(self, cells: Sequence[str]) -> list[Listing]: ...
    async def listed_children(self, index_cells: Sequence[str]) -> list[str]: ...


class CandidateLists(Protocol):
    """A viewer's ranked list, kept while they page through it: pages never repeat or skip anyone."""

    async def save(self, viewer: uuid.UUID, list_id: str, entries: Sequence[Ranked], ttl: timedelta) -> None: ...
    # Entries from `start` on (fewer at the end) and the length of the whole list; None: no such list
    # of this viewer's (expired, or never theirs).
    async def read(self, viewer: uuid.UUID, list_id: str, start: int, count: int
                   ) -> tuple[list[Ranked], int] | None: ...


class Exclusions(Protocol):
    # Of `others`: those the viewer has a written swipe on, those blocked either way, and everyone's
    # current profile (the deleted have none). The first two come from the viewer's own rows and the
    # profiles sit beside them, so one lookup answers all three.
    async def page_people(self, user_id: uuid.UUID, others: Sequence[uuid.UUID]
                          ) -> tuple[set[uuid.UUID], set[uuid.UUID], dict[uuid.UUID, User]]: ...


@dataclass(frozen=True)
class NearbyDeps:
    swipes: SwipeDeps
    places: LocationDeps
    buckets: Buckets
    lists: CandidateLists
    exclusions: Exclusions
    cursor_key: bytes
    inactive_after: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Filter:
    max_distance_km: int | None = None
    age_min: int | None = None
    age_max: int | None = None
    genders: frozenset[Gender] | None = None


@dataclass(frozen=True)
class Candidate:
    person: User
    why: Ranked
    cursor: str  # resumes the list right after this person


@dataclass(frozen=True)
class Page:
    candidates: list[Candidate]
    end_cursor: str | None
    has_next: bool


def wanted_by(user: User, given: Filter) -> Wanted:
    wanted = Wanted(
        given.max_distance_km if given.max_distance_km is not None else user.discovery.max_distance_km,
        given.age_min if given.age_min is not None else user.discovery.age_min,
        given.age_max if given.age_max is not None else user.discovery.age_max,
        given.genders if given.genders is not None else user.show_me,
    )
    if not 1 <= wanted.max_distance_km <= MAX_RADIUS_KM:
        raise InputError(Code.INVALID_DISTANCE, f"Distance must be 1 to {MAX_RADIUS_KM} km", "maxDistanceKm")
    if not MIN_AGE <= wanted.age_min <= wanted.age_max <= MAX_AGE_FILTER:
        # The same bounds as the saved settings; the field named is the one given that breaks them.
        field = "ageMax" if given.age_max is not None and not MIN_AGE <= given.age_max <= MAX_AGE_FILTER else "ageMin"
        raise InputError(Code.INVALID_AGE_RANGE,
                         f"Ages must satisfy {MIN_AGE} <= min <= max <= {MAX_AGE_FILTER}", field)
    if not wanted.genders:
        raise InputError(Code.INVALID_INPUT, "Choose at least one gender", "genders")
    return wanted


def as_listing(user: User, cell: str) -> Listing:
    d = user.discovery
    return Listing(user.id, cell, user.gender, user.birth_date, user.show_me, d.age_min, d.age_max,
                   d.max_distance_km, user.interest_tags, None)


async def _gather(deps: NearbyDeps, at: Point, radius_km: int) -> list[Listing]:
    plan = cover(at, radius_km)
    cells = list(plan.cells)
    if plan.index_cells:
        cells = list(kept(at, radius_km, [*cells, *await deps.buckets.listed_children(plan.index_cells)]))
    found: list[Listing] = []
    for start in range(0, len(cells), CELLS_PER_READ):
        found += await deps.buckets.listings(cells[start:start + CELLS_PER_READ])
        if len(found) >= MAX_POOL:
            break
    return found


async def nearby(deps: NearbyDeps, viewer_id: uuid.UUID, first: int | None, after: str | None, given: Filter,
                 now: datetime) -> Page:
    size = page_size(first)
    if after is None:
        # Independent reads go out together: one round trip's wait instead of three.
        viewer, where, admirers = await asyncio.gather(
            deps.swipes.users.get(viewer_id), deps.places.locations.get(viewer_id),
            deps.swipes.relations.super_likers(viewer_id, 50),
        )
        here = where.current(now, deps.places.limits.device_fresh_for) if where else None
        if viewer is None or here is None:
            raise DomainError(Code.LOCATION_REQUIRED, "Share your location (or sign in again) to see people nearby")
        wanted = wanted_by(viewer, given)
        pool = await _gather(deps, centre(here[0]), wanted.max_distance_km)
        ranked = rank(as_listing(viewer, here[0]), wanted, pool, now.date(), frozenset(admirers),
                      deps.inactive_after)
        list_id = new_id().hex
        # The first page is checked from the fresh list while the list is stored; both are done
        # before the page (and its cursors into the stored list) is returned.
        _, page = await asyncio.gather(deps.lists.save(viewer_id, list_id, ranked, LIST_TTL),
                                       _page(deps, viewer_id, list_id, 0, size, ranked))
        return page
    list_id, start = _position(deps.cursor_key, after)
    return await _page(deps, viewer_id, list_id, start, size, None)


def _position(key: bytes, cursor: str) -> tuple[str, int]:
    payload = decode_cursor(key, "nearby", cursor)
    if len(payload) != 2 or not isinstance(payload[0], str) or not isinstance(payload[1], int):
        raise InputError(Code.INVALID_CURSOR, "Not a cursor of this list", "after")
    return payload[0], payload[1]


async def _page(deps: NearbyDeps, viewer_id: uuid.UUID, list_id: str, start: int, size: int,
                fresh: list[Ranked] | None) -> Page:
    chosen: list[Candidate] = []
    cursor = cursors_along(deps.cursor_key, "nearby", [list_id])
    position = start
    total = len(fresh) if fresh is not None else None
    # A little more than a page: a few will have been swiped, blocked or hidden since (each person
    # checked costs a profile loaded). Twice as much each time round: someone back in a place where
    # they swiped hundreds finds them first in a new list, and must not pay a round trip per page.
    want = size + max(2, size // 4)
    while len(chosen) < size and (total is None or position < total):
        if fresh is not None:
            chunk = fresh[position:position + want]
        else:
            found = await deps.lists.read(viewer_id, list_id, position, want)
            if found is None:
                raise InputError(Code.INVALID_CURSOR, "This list has expired; start again without a cursor", "after")
            chunk, total = found
        if not chunk:
            break
        want = min(2 * want, MAX_CHUNK)
        ids = [entry.user_id for entry in chunk]
        left_out, people = await _left_out(deps, viewer_id, ids)
        for entry in chunk:
            position += 1
            if entry.user_id in left_out:
                continue
            person = people.get(entry.user_id)
            if person is not None and person.visibility is Visibility.VISIBLE:
                chosen.append(Candidate(person, entry, cursor(position)))
                if len(chosen) == size:
                    break
    if not chosen:
        return Page(chosen, None, False)
    return Page(chosen, cursor(position), total is not None and position < total)


async def _left_out(deps: NearbyDeps, viewer_id: uuid.UUID, ids: list[uuid.UUID]
                    ) -> tuple[set[uuid.UUID], dict[uuid.UUID, User]]:
    """Who of `ids` the viewer swiped or blocked, as of now, and everyone's current profile.

    already_swiped's rule (a swipe still queued counts, an undo still queued un-counts the written
    swipe), with the queue and the database asked at once instead of one after the other: the two
    reads are independent, so a page waits for the slower, not for their sum."""
    queued, (written, blocked, people) = await asyncio.gather(
        deps.swipes.queue.pending(viewer_id, ids), deps.exclusions.page_people(viewer_id, ids),
    )
    swiped = {t for t, s in queued.items() if s is not None} | {t for t in written if t not in queued}
    return swiped | blocked, people
