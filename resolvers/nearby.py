import asyncio
import uuid
from datetime import datetime

from domain import locations
from domain.errors import DomainError
from domain.geo import band_label, cell_size_km
from domain.locations import Whereabouts
from domain.nearby import Filter, Page, nearby
from resolvers.claims import claimed_user
from resolvers.context import Info
from schema.accounts import CATALOGUE_GQL, PersonGQL
from schema.errors import error_member
from schema.nearby import (
    BANDS,
    CandidateConnectionGQL,
    CandidateEdgeGQL,
    CandidateGQL,
    MyLocationGQL,
    NearbyFilterInput,
    UpdateLocationResult,
    WhyShownGQL,
)
from schema.swipes import PageInfoGQL


def _my_location(where: Whereabouts, now: datetime, info: Info) -> MyLocationGQL | None:
    found = where.current(now, info.context.ports.places.limits.device_fresh_for)
    if found is None:
        return None
    cell, source, at = found
    return MyLocationGQL(source=source, updated_at=at, cell_size_km=round(cell_size_km(cell), 1))


async def update_location(info: Info, latitude: float, longitude: float, accuracy_meters: float
                          ) -> UpdateLocationResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    now = ports.clock()
    try:
        where = await locations.update_from_device(ports.places, principal.user_id, latitude, longitude,
                                                   accuracy_meters, now)
    except DomainError as exc:
        return error_member(exc)
    found = _my_location(where, now, info)
    assert found is not None  # a device position was just stored
    return found


async def my_location(info: Info) -> MyLocationGQL | None:
    principal = await info.context.require_user()
    ports = info.context.ports
    where = await ports.places.locations.get(principal.user_id)
    return None if where is None else _my_location(where, ports.clock(), info)


async def _following_page(info: Info, user_id: uuid.UUID, first: int | None, after: str, given: Filter,
                          now: datetime) -> Page:
    # A following page only reads, so its reads go out while the session is still being checked
    # (one round trip's wait instead of two); nothing of them is used unless the check passes, and
    # activity is noted only then.
    reads = asyncio.ensure_future(nearby(info.context.ports.nearby, user_id, first, after, given, now))
    try:
        principal = await info.context.require_user()
    except BaseException:
        reads.cancel()
        reads.add_done_callback(_retrieved)
        raise
    assert principal.user_id == user_id  # both come from the same verified token
    page, _ = await asyncio.gather(reads, info.context.ports.places.activity.touch(user_id, now))
    return page


def _retrieved(task: "asyncio.Future[Page]") -> None:
    if not task.cancelled():
        task.exception()  # an abandoned page's error is not worth a warning


async def nearby_candidates(info: Info, first: int | None = 20, after: str | None = None,
                            filter: NearbyFilterInput | None = None) -> CandidateConnectionGQL:
    ports = info.context.ports
    now = ports.clock()
    given = Filter() if filter is None else Filter(
        filter.max_distance_km, filter.age_min, filter.age_max,
        None if filter.genders is None else frozenset(filter.genders),
    )
    claimed = claimed_user(info.context) if after is not None else None
    if after is not None and claimed is not None:
        page = await _following_page(info, claimed, first, after, given, now)
    else:
        user_id = (await info.context.require_user()).user_id
        # Activity is noted alongside (at most one write an hour), not after: it waits on nothing here.
        page, _ = await asyncio.gather(nearby(ports.nearby, user_id, first, after, given, now),
                                       ports.places.activity.touch(user_id, now))
    today = now.date()
    edges = [
        CandidateEdgeGQL(cursor=c.cursor, node=CandidateGQL(
            person=PersonGQL.from_domain(c.person, today),
            why_shown=WhyShownGQL(
                shared_tags=[CATALOGUE_GQL[t] for t in c.why.shared_tags if t in CATALOGUE_GQL],
                distance=BANDS[c.why.band], distance_label=band_label(c.why.band),
                active_recently=c.why.active_recently and c.person.show_activity, super_liked_you=c.why.super_like,
            ),
        ))
        for c in page.candidates
    ]
    return CandidateConnectionGQL(edges=edges, page_info=PageInfoGQL(has_next_page=page.has_next,
                                                                     end_cursor=page.end_cursor))
