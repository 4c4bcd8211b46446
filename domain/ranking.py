import calendar
import math
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from hashlib import blake2b
from itertools import chain

from domain.geo import BAND_EDGES_KM, band_of, centre, distance_km, radius_band
from domain.model import Gender, age_on


@dataclass(frozen=True)
class Listing:
    """What a bucket holds about a person: enough to filter and rank without another lookup."""

    user_id: uuid.UUID
    cell: str
    gender: Gender
    birth_date: date
    show_me: frozenset[Gender]
    age_min: int
    age_max: int
    max_distance_km: int
    tags: tuple[str, ...]
    active_on: date | None  # the last day they were active; None when they hide their activity


@dataclass(frozen=True)
class Wanted:
    """Who the viewer is looking for in this list (their saved settings, or a filter over them)."""

    max_distance_km: int
    age_min: int
    age_max: int
    genders: frozenset[Gender]


@dataclass(frozen=True)
class Ranked:
    user_id: uuid.UUID
    band: int
    shared_tags: tuple[str, ...]
    active_recently: bool
    super_like: bool
    score: float


ACTIVE_DAYS = 3  # "active recently": within this many days, said no finer than that
WEIGHT_TAGS, WEIGHT_BAND, WEIGHT_ACTIVE, WEIGHT_FIT = 3.0, 1.0, 0.5, 0.5


def fits(a: Listing, b: Listing, wanted_by_a: Wanted, today: date, distance: float) -> bool:
    """Whether b is someone a wants to see, on a's terms, at a distance already snapped to cells."""
    age = age_on(b.birth_date, today)
    return (b.gender in wanted_by_a.genders and wanted_by_a.age_min <= age <= wanted_by_a.age_max
            and band_of(distance) <= radius_band(wanted_by_a.max_distance_km))


def own_terms(listing: Listing) -> Wanted:
    return Wanted(listing.max_distance_km, listing.age_min, listing.age_max, listing.show_me)


def tie_break(viewer: uuid.UUID, today: date, other: uuid.UUID) -> int:
    # Stable for a viewer through a day, unrelated to anything about the other person's position.
    digest = blake2b(viewer.bytes + today.isoformat().encode() + other.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _latest_birth(today: date, age: int) -> date | None:
    """The last birth date of anyone at least `age` on `today`, as age_on counts; None: nobody is."""
    # age_on(birth, today) >= age exactly when (birth year, month, day) <= (today's year - age, month, day).
    year = today.year - age
    if year < date.min.year:
        return None
    if year > date.max.year:
        return date.max
    if (today.month, today.day) == (2, 29) and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, today.month, today.day)


def _births(today: date, low: int, high: int) -> tuple[date | None, date] | None:
    """Everyone aged low to high on `today` is born after the first date (None: no bound) and on or
    before the second; None: nobody can be."""
    until = _latest_birth(today, low)
    return None if until is None else (_latest_birth(today, high + 1), until)


@lru_cache(maxsize=1 << 16)  # viewers in one city share cells, and so do the people they see
def _band_between(here: str, there: str) -> int:
    return band_of(distance_km(centre(here), centre(there)))


def rank(viewer: Listing, wanted: Wanted, candidates: Iterable[Listing], today: date,
         super_likers: frozenset[uuid.UUID] = frozenset(), inactive_after: timedelta = timedelta(days=30)
         ) -> list[Ranked]:
    """Everyone who fits both ways, best first: super likes of the viewer, then by score."""
    # The same rules as fits() both ways and the score below, inlined: a dense city puts thousands
    # of candidates through this loop for every new list. Distances and bands are worked out once
    # per cell, ages are told from birth dates against bounds worked out once, and the cheapest
    # tests go first.
    here = viewer.cell
    viewer_id, viewer_gender, viewer_age = viewer.user_id.int, viewer.gender, age_on(viewer.birth_date, today)
    genders = wanted.genders
    wanted_births = _births(today, wanted.age_min, wanted.age_max)
    if wanted_births is None:
        return []  # nobody can be that old
    born_after, born_until = wanted_births
    reach = radius_band(wanted.max_distance_km)
    bands: dict[str, int] = {}
    reaches: dict[int, int] = {}
    pool: list[tuple[Listing, int]] = []  # (listing, band)
    # Dates differ by whole days, so today - active_on > inactive_after exactly when active_on is
    # before this day.
    idle_before = today - timedelta(days=inactive_after.days)
    seen: set[int] = set()
    for other in candidates:
        if other.gender not in genders or viewer_gender not in other.show_me:
            continue
        if not other.age_min <= viewer_age <= other.age_max:
            continue
        birth = other.birth_date
        if birth > born_until or (born_after is not None and birth <= born_after):
            continue
        if other.active_on is not None and other.active_on < idle_before:
            continue
        band = bands.get(other.cell)
        if band is None:
            band = bands[other.cell] = _band_between(here, other.cell)
        if band > reach:
            continue
        theirs = reaches.get(other.max_distance_km)
        if theirs is None:
            theirs = reaches[other.max_distance_km] = radius_band(other.max_distance_km)
        uid = other.user_id.int
        # Someone moving is briefly listed in two buckets: they still count once.
        if band > theirs or uid == viewer_id or uid in seen:
            continue
        seen.add(uid)
        pool.append((other, band))
    # Rarer tags weigh more, rarity measured among the people actually in reach.
    counts = Counter(chain.from_iterable(map(set, [other.tags for other, _ in pool])))
    weight = {tag: 1 + math.log((len(pool) + 1) / (n + 1)) for tag, n in counts.items()}
    most = sum(sorted((weight.get(t, 0.0) for t in viewer.tags), reverse=True)[:len(viewer.tags)]) or 1.0
    viewer_tags, show_me, own_reach = viewer.tags, viewer.show_me, radius_band(viewer.max_distance_km)
    viewer_set = frozenset(viewer_tags)
    active_since = today - timedelta(days=ACTIVE_DAYS)
    own_births = _births(today, viewer.age_min, viewer.age_max)  # whom the viewer's own settings fit
    salt = viewer.user_id.bytes + today.isoformat().encode()  # as tie_break()
    scores: dict[tuple[tuple[str, ...], int, bool, bool], float] = {}  # most people share a few of these
    keys: list[tuple[int, float, int, int]] = []
    entries: list[Ranked] = []
    for other, band in pool:
        # Most people share none of the viewer's tags: the set test says so without building anything.
        shared = () if viewer_set.isdisjoint(other.tags) else tuple(filter(other.tags.__contains__, viewer_tags))
        active = other.active_on is not None and other.active_on >= active_since
        fit = (other.gender in show_me and band <= own_reach and own_births is not None
               and other.birth_date <= own_births[1] and (own_births[0] is None or other.birth_date > own_births[0]))
        score = scores.get((shared, band, active, fit))
        if score is None:
            score = (WEIGHT_TAGS * sum(weight[t] for t in shared) / most
                     + WEIGHT_BAND * (1 - band / len(BAND_EDGES_KM)) + WEIGHT_ACTIVE * active + WEIGHT_FIT * fit)
            # Equal scores must tie exactly, whatever the float noise.
            score = scores[shared, band, active, fit] = round(score, 6)
        admirer = bool(super_likers) and other.user_id in super_likers
        tie = int.from_bytes(blake2b(salt + other.user_id.int.to_bytes(16, "big"), digest_size=8).digest(), "big")
        keys.append((0 if admirer else 1, -score, tie, len(entries)))
        entries.append(Ranked(other.user_id, band, shared, active, admirer, score))
    keys.sort()
    return [entries[key[3]] for key in keys]
