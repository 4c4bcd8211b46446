"""domain.ranking: who is shown (filtering both ways), in which order, and that order never says more about
someone's position than their distance band."""

import math
import random
import uuid
from dataclasses import replace
from datetime import date, timedelta

import pygeohash

from domain.geo import EARTH_KM, Point, band_of, centre, distance_km
from domain.model import Gender
from domain.ranking import Listing, Ranked, Wanted, rank, tie_break

TODAY = date(2026, 6, 1)
HOME = Point(48.8566, 2.3522)
VIEWER_CELL = str(pygeohash.encode(HOME.lat, HOME.lon, 6))
HERE = centre(VIEWER_CELL)
EVERYONE = frozenset(Gender)


# The last band a radius reaches: "under 1 km" for 1 km, "1-2 km" for 2, "2-5 km" for 3 to 5, ...
RADIUS_BANDS = {1: 0, 2: 1, 3: 2, 5: 2, 10: 3, 20: 4, 50: 5}


def destination(start: Point, bearing_deg: float, km: float) -> Point:
    angle, bearing = km / EARTH_KM, math.radians(bearing_deg)
    lat1, lon1 = math.radians(start.lat), math.radians(start.lon)
    lat2 = math.asin(math.sin(lat1) * math.cos(angle) + math.cos(lat1) * math.sin(angle) * math.cos(bearing))
    lon2 = lon1 + math.atan2(math.sin(bearing) * math.sin(angle) * math.cos(lat1),
                             math.cos(angle) - math.sin(lat1) * math.sin(lat2))
    return Point(math.degrees(lat2), (math.degrees(lon2) + 540.0) % 360.0 - 180.0)


def uid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def born(age: int) -> date:
    """A birth date giving this age on TODAY (their birthday was a month ago)."""
    return date(TODAY.year - age, TODAY.month - 1, TODAY.day)


def cell_at(km: float, bearing: float = 90.0) -> str:
    """A privacy cell about `km` from the viewer's cell centre."""
    p = destination(HERE, bearing, km)
    return str(pygeohash.encode(p.lat, p.lon, 6))


def band_from_viewer(cell: str) -> int:
    return band_of(distance_km(HERE, centre(cell)))


def person(user_id: uuid.UUID | None = None, cell: str = VIEWER_CELL, gender: Gender = Gender.WOMAN, age: int = 30,
           show_me: frozenset[Gender] = EVERYONE, age_min: int = 18, age_max: int = 99, max_distance_km: int = 50,
           tags: tuple[str, ...] = (), active_on: date | None = TODAY) -> Listing:
    return Listing(user_id or uuid.uuid4(), cell, gender, born(age), show_me, age_min, age_max, max_distance_km,
                   tags, active_on)


VIEWER = person(uuid.UUID(int=1, version=4), gender=Gender.MAN, age=30, tags=("hiking", "chess", "jazz", "go"))
WANT_ALL = Wanted(max_distance_km=50, age_min=18, age_max=99, genders=EVERYONE)


def ids(ranked: list[Ranked]) -> list[uuid.UUID]:
    return [r.user_id for r in ranked]


def shown(candidates: list[Listing], wanted: Wanted = WANT_ALL, viewer: Listing = VIEWER,
          inactive_after: timedelta = timedelta(days=30)) -> list[uuid.UUID]:
    return ids(rank(viewer, wanted, candidates, TODAY, inactive_after=inactive_after))


# --- who is shown ---------------------------------------------------------------------------------------------


def test_the_viewer_never_sees_themselves() -> None:
    other = person()
    assert shown([VIEWER, other, replace(VIEWER, cell=cell_at(3))]) == [other.user_id]


def test_only_the_wanted_genders_are_shown() -> None:
    woman, man, nonbinary = person(gender=Gender.WOMAN), person(gender=Gender.MAN), person(gender=Gender.NONBINARY)
    wanted = replace(WANT_ALL, genders=frozenset({Gender.WOMAN, Gender.NONBINARY}))
    assert set(shown([woman, man, nonbinary], wanted)) == {woman.user_id, nonbinary.user_id}


def test_only_the_wanted_ages_are_shown() -> None:
    people = {age: person(age=age) for age in (18, 24, 25, 30, 35, 36, 99)}
    wanted = replace(WANT_ALL, age_min=25, age_max=35)
    assert set(shown(list(people.values()), wanted)) == {people[a].user_id for a in (25, 30, 35)}
    # A birthday today counts: born 25 years ago today is 25.
    birthday = replace(person(), birth_date=date(TODAY.year - 25, TODAY.month, TODAY.day))
    tomorrow = replace(person(), birth_date=date(TODAY.year - 25, TODAY.month, TODAY.day + 1))
    assert shown([birthday, tomorrow], wanted) == [birthday.user_id]


def test_only_people_within_the_wanted_distance_are_shown() -> None:
    near, band_two, far = person(cell=cell_at(1.5)), person(cell=cell_at(3.5)), person(cell=cell_at(7.0))
    assert [band_from_viewer(p.cell) for p in (near, band_two, far)] == [1, 2, 3]
    assert set(shown([near, band_two, far], replace(WANT_ALL, max_distance_km=2))) == {near.user_id}
    # A radius counts in whole bands: 3 km reaches the whole "2-5 km" band.
    assert set(shown([near, band_two, far], replace(WANT_ALL, max_distance_km=3))) == {near.user_id,
                                                                                        band_two.user_id}


def test_people_whose_own_genders_exclude_the_viewer_are_not_shown() -> None:
    likes_men, likes_women = person(show_me=frozenset({Gender.MAN})), person(show_me=frozenset({Gender.WOMAN}))
    assert shown([likes_men, likes_women]) == [likes_men.user_id]


def test_people_whose_own_ages_exclude_the_viewer_are_not_shown() -> None:
    younger, includes, older = person(age_max=29), person(age_min=30, age_max=30), person(age_min=31)
    assert shown([younger, includes, older]) == [includes.user_id]


def test_people_whose_own_distance_excludes_the_viewer_are_not_shown() -> None:
    cell = cell_at(1.5)
    assert band_from_viewer(cell) == 1
    one_km, two_km = person(cell=cell, max_distance_km=1), person(cell=cell, max_distance_km=2)
    assert shown([one_km, two_km]) == [two_km.user_id]


def test_people_inactive_too_long_are_not_shown() -> None:
    day = timedelta(days=1)
    today, at_limit, past = person(active_on=TODAY), person(active_on=TODAY - 30 * day), person(
        active_on=TODAY - 31 * day)
    hidden = person(active_on=None)  # hides their activity: never judged inactive
    assert set(shown([today, at_limit, past, hidden])) == {today.user_id, at_limit.user_id, hidden.user_id}
    assert set(shown([today, at_limit, past, hidden], inactive_after=5 * day)) == {today.user_id, hidden.user_id}


def test_filters_hold_both_ways_for_random_people() -> None:
    rng = random.Random(3)
    genders = list(Gender)
    for _ in range(300):
        viewer_age = rng.randint(18, 70)
        viewer = person(uid(rng), gender=rng.choice(genders), age=viewer_age,
                        show_me=frozenset(rng.sample(genders, rng.randint(1, 3))))
        wanted = Wanted(rng.choice((1, 2, 3, 5, 10, 20)), rng.randint(18, 40), rng.randint(40, 80),
                        frozenset(rng.sample(genders, rng.randint(1, 3))))
        ages: dict[uuid.UUID, int] = {}
        candidates: list[Listing] = []
        for _ in range(15):
            age = rng.randint(18, 90)
            candidate = person(uid(rng), cell=cell_at(rng.uniform(0, 25), rng.uniform(0, 360)),
                               gender=rng.choice(genders), age=age,
                               show_me=frozenset(rng.sample(genders, rng.randint(1, 3))),
                               age_min=rng.randint(18, 40), age_max=rng.randint(30, 90),
                               max_distance_km=rng.choice((1, 2, 3, 5, 10, 50)),
                               active_on=TODAY - timedelta(days=rng.randint(0, 40)))
            ages[candidate.user_id] = age
            candidates.append(candidate)
        expected = set()
        for c in candidates:
            band = band_from_viewer(c.cell)
            assert c.active_on is not None
            if (c.gender in wanted.genders and wanted.age_min <= ages[c.user_id] <= wanted.age_max
                    and band <= RADIUS_BANDS[wanted.max_distance_km]
                    and viewer.gender in c.show_me and c.age_min <= viewer_age <= c.age_max
                    and band <= RADIUS_BANDS[c.max_distance_km]
                    and TODAY - c.active_on <= timedelta(days=30)):
                expected.add(c.user_id)
        result = shown(candidates, wanted, viewer)
        assert len(result) == len(set(result))
        assert set(result) == expected


# --- order ----------------------------------------------------------------------------------------------------


def test_super_likers_come_first() -> None:
    rng = random.Random(5)
    for _ in range(50):
        best = [person(uid(rng), tags=VIEWER.tags) for _ in range(5)]  # every tag shared, nearest band
        admirers = [person(uid(rng), cell=cell_at(30), active_on=None) for _ in range(3)]  # nothing shared, far
        candidates = best + admirers
        rng.shuffle(candidates)
        result = rank(VIEWER, WANT_ALL, candidates, TODAY, super_likers=frozenset(a.user_id for a in admirers))
        assert {r.user_id for r in result[:3]} == {a.user_id for a in admirers}
        assert all(r.super_like for r in result[:3]) and not any(r.super_like for r in result[3:])
        assert ids(result[3:]) == ids(rank(VIEWER, WANT_ALL, best, TODAY))


def test_more_shared_tags_rank_higher() -> None:
    rng = random.Random(7)
    others = [person(uid(rng), tags=("hiking", "chess", "jazz", "go")) for _ in range(6)]  # all tags as common
    for _ in range(200):
        two, one, none = (person(uid(rng), tags=("hiking", "chess", "knitting")),
                          person(uid(rng), tags=("hiking", "knitting")), person(uid(rng), tags=("knitting",)))
        candidates = [none, one, two, *others]
        rng.shuffle(candidates)
        order = shown(candidates)
        assert order.index(two.user_id) < order.index(one.user_id) < order.index(none.user_id)
        ranked = {r.user_id: r for r in rank(VIEWER, WANT_ALL, candidates, TODAY)}
        assert ranked[two.user_id].shared_tags == ("hiking", "chess")
        assert ranked[none.user_id].shared_tags == ()


def test_a_shared_rare_tag_outweighs_a_shared_common_one() -> None:
    rng = random.Random(9)
    for _ in range(200):
        crowd = [person(uid(rng), tags=("hiking", "knitting")) for _ in range(rng.randint(3, 12))]
        common, rare = person(uid(rng), tags=("hiking",)), person(uid(rng), tags=("go",))
        candidates = [common, rare, *crowd]
        rng.shuffle(candidates)
        order = shown(candidates)
        assert order.index(rare.user_id) < order.index(common.user_id)


def test_ties_follow_the_tie_break_for_the_viewer_and_day() -> None:
    rng = random.Random(11)
    twins = [person(uid(rng), cell=cell_at(3.0, rng.uniform(0, 360)), tags=("jazz",)) for _ in range(20)]
    assert len({band_from_viewer(t.cell) for t in twins}) == 1
    order = shown(twins)
    assert order == sorted(order, key=lambda other: tie_break(VIEWER.user_id, TODAY, other))
    ranked = rank(VIEWER, WANT_ALL, twins, TODAY)
    assert len({r.score for r in ranked}) == 1  # they really tie
    for _ in range(20):  # stable through the day, whatever order the buckets were read in
        shuffled = twins[:]
        rng.shuffle(shuffled)
        assert shown(shuffled) == order
    tomorrow = ids(rank(VIEWER, WANT_ALL, twins, TODAY + timedelta(days=1)))
    assert set(tomorrow) == set(order) and tomorrow != order
    someone_else = shown(twins, viewer=replace(VIEWER, user_id=uid(rng)))
    assert someone_else != order


def test_tie_break_is_deterministic_and_varies_by_day_and_viewer() -> None:
    rng = random.Random(13)
    viewer, other = uid(rng), uid(rng)
    assert tie_break(viewer, TODAY, other) == tie_break(viewer, TODAY, other)
    days = {tie_break(viewer, TODAY + timedelta(days=n), other) for n in range(30)}
    assert len(days) == 30
    assert tie_break(uid(rng), TODAY, other) != tie_break(viewer, TODAY, other)


def test_order_within_a_band_is_not_a_distance_oracle() -> None:
    # Two listings identical but for their cells, both in one band: swapping the cells (so the other one is
    # the nearer) must not change their order, nor anything said about them.
    rng = random.Random(17)
    bands_checked: set[int] = set()
    for _ in range(400):
        low, high = rng.choice(((0.0, 0.9), (1.05, 1.95), (2.1, 4.9), (5.1, 9.9), (10.2, 19.8), (20.5, 49.5)))
        near_cell = cell_at(rng.uniform(low, (low + high) / 2), rng.uniform(0, 360))
        far_cell = cell_at(rng.uniform((low + high) / 2, high), rng.uniform(0, 360))
        band = band_from_viewer(near_cell)
        if band_from_viewer(far_cell) != band or distance_km(HERE, centre(near_cell)) == distance_km(
                HERE, centre(far_cell)):
            continue
        bands_checked.add(band)
        template = person(tags=tuple(rng.sample(VIEWER.tags, rng.randint(0, 2))), age=rng.randint(18, 60))
        a, b = replace(template, user_id=uid(rng)), replace(template, user_id=uid(rng))
        crowd = [person(uid(rng), cell=cell_at(rng.uniform(0, 40), rng.uniform(0, 360)),
                        tags=tuple(rng.sample(VIEWER.tags, rng.randint(0, 3)))) for _ in range(5)]
        first = rank(VIEWER, WANT_ALL, [replace(a, cell=near_cell), replace(b, cell=far_cell), *crowd], TODAY)
        swapped = rank(VIEWER, WANT_ALL, [replace(a, cell=far_cell), replace(b, cell=near_cell), *crowd], TODAY)
        assert first == swapped
        pair = [u for u in ids(first) if u in (a.user_id, b.user_id)]
        assert pair == sorted(pair, key=lambda other: tie_break(VIEWER.user_id, TODAY, other))
    assert bands_checked == {0, 1, 2, 3, 4, 5}


def test_ranked_entries_say_distance_as_a_band_only() -> None:
    other = person(cell=cell_at(3.7))
    (entry,) = rank(VIEWER, WANT_ALL, [other], TODAY)
    assert entry.band == 2
    assert set(vars(entry)) == {"user_id", "band", "shared_tags", "active_recently", "super_like", "score"}
    nearer = rank(VIEWER, WANT_ALL, [replace(other, cell=cell_at(2.3))], TODAY)[0]
    assert nearer == entry


def test_someone_listed_twice_while_moving_counts_once() -> None:
    moving = person(cell=cell_at(0.5))
    elsewhere = replace(moving, cell=cell_at(1.5))  # their old bucket, not yet cleared
    assert shown([moving, elsewhere]) == [moving.user_id]
