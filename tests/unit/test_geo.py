"""Properties of domain.geo that the product depends on: nobody in range is missed, nobody is located finer
than their privacy cell or their accuracy, and every distance said about someone is a band.

Randomised with seeded `random` loops (hypothesis is not installed): each test is reproducible from its seed.
"""

import math
import random

import pygeohash
import pytest

from domain.geo import (
    BAND_EDGES_KM,
    EARTH_KM,
    MAX_RADIUS_KM,
    POLAR_CAP,
    Point,
    band_label,
    band_of,
    bucket_of,
    centre,
    cover,
    distance_km,
    index_of,
    kept,
    radius_band,
    snap,
    valid_position,
    within,
)

KM_PER_DEGREE = math.pi * EARTH_KM / 180
# The privacy precision per latitude row, restated here so that a change to it is a visible decision.
PRIVACY_ROWS = ((80.0, 6), (88.0, 5), (math.inf, 3))
LABELS = ["under 1 km", "1-2 km", "2-5 km", "5-10 km", "10-20 km", "20-50 km", "50-100 km", "100-200 km",
          "200-500 km", "over 500 km"]


def destination(start: Point, bearing_deg: float, km: float) -> Point:
    """The point `km` away from `start` along a great circle leaving at `bearing_deg` (0 = north)."""
    angle, bearing = km / EARTH_KM, math.radians(bearing_deg)
    lat1, lon1 = math.radians(start.lat), math.radians(start.lon)
    lat2 = math.asin(math.sin(lat1) * math.cos(angle) + math.cos(lat1) * math.sin(angle) * math.cos(bearing))
    lon2 = lon1 + math.atan2(math.sin(bearing) * math.sin(angle) * math.cos(lat1),
                             math.cos(angle) - math.sin(lat1) * math.sin(lat2))
    lon = (math.degrees(lon2) + 540.0) % 360.0 - 180.0
    return Point(max(-90.0, min(90.0, math.degrees(lat2))), max(-180.0, min(180.0, lon)))


def privacy_precision(lat: float) -> int:
    return next(p for edge, p in PRIVACY_ROWS if abs(lat) < edge)


def cell_sides_km(cell: str) -> tuple[float, float]:
    """(height, shorter parallel side) of a cell in km.

    A cell's parallel sides are arcs of its poleward and equatorward latitudes; the poleward one is the shorter.
    A cell touching a pole has no poleward side (it is a wedge meeting at the pole), so its equatorward arc is
    its only parallel side.
    """
    found = pygeohash.decode_exactly(cell)
    height = 2 * found.latitude_error * KM_PER_DEGREE
    poleward = abs(found.latitude) + found.latitude_error
    side_lat = poleward if poleward < 90 - 1e-9 else abs(found.latitude) - found.latitude_error
    width = 2 * found.longitude_error * KM_PER_DEGREE * math.cos(math.radians(side_lat))
    return height, width


def listed_for(at: Point, radius_km: float, bucket: str) -> bool:
    """Whether a reader following cover(at, radius) reads this bucket: directly, or through the coarse index."""
    plan = cover(at, radius_km)
    if bucket in plan.cells:
        return True
    return bool(plan.index_cells) and index_of(bucket) in plan.index_cells and bucket in kept(at, radius_km, [bucket])


def random_viewer(rng: random.Random) -> Point:
    """Mostly the hard places: antimeridian, poles, the latitude rows' borders and the equator."""
    side = rng.choice((-1.0, 1.0))
    lat = rng.choice((
        lambda: rng.uniform(-90.0, 90.0),
        lambda: side * rng.uniform(89.0, 90.0),
        lambda: side * rng.uniform(59.9, 60.1),
        lambda: side * rng.uniform(79.9, 80.1),
        lambda: side * rng.uniform(87.9, 88.1),
        lambda: rng.uniform(-0.1, 0.1),
    ))()
    lon = rng.uniform(-180.0, 180.0) if rng.random() < 0.5 else rng.choice((-1.0, 1.0)) * rng.uniform(179.5, 180.0)
    return Point(lat, lon)


ACCURACIES_M = (5.0, 30.0, 100.0, 500.0)


# --- cover completeness -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cover_finds_everyone_within_the_radius(seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for _ in range(1000):
        viewer = random_viewer(rng)
        radius = rng.randint(1, MAX_RADIUS_KM) if rng.random() < 0.5 else rng.randint(1, 20)
        here = centre(snap(viewer.lat, viewer.lon, rng.choice(ACCURACIES_M)))
        plan = cover(here, radius)
        assert len(set(plan.cells)) == len(plan.cells)
        reach = BAND_EDGES_KM[radius_band(radius)]
        for n in range(20):
            # Around the true position and around the snapped one, out to a little beyond the radius.
            origin = viewer if n % 2 else here
            person = destination(origin, rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.2 * reach))
            cell = snap(person.lat, person.lon, rng.choice(ACCURACIES_M))
            if not within(distance_km(here, centre(cell)), radius):
                continue
            checked += 1
            bucket = bucket_of(cell)
            found = bucket in plan.cells or (
                bool(plan.index_cells) and index_of(bucket) in plan.index_cells
                and bucket in kept(here, radius, [bucket]))
            assert found, (viewer, radius, here, person, cell, bucket)
    assert checked > 5000  # the loop really exercised the property


@pytest.mark.parametrize("lat", [0.0, 45.0, -45.0])
def test_neighbours_across_the_antimeridian_find_each_other(lat: float) -> None:
    east, west = Point(lat, 179.99994), Point(lat, -179.99994)
    assert distance_km(east, west) == pytest.approx(0.12 * KM_PER_DEGREE * math.cos(math.radians(lat)) / 1000,
                                                    rel=1e-3)
    east_cell, west_cell = snap(east.lat, east.lon, 10), snap(west.lat, west.lon, 10)
    d = distance_km(centre(east_cell), centre(west_cell))
    assert d == pytest.approx(distance_km(centre(west_cell), centre(east_cell)))
    assert within(d, 2)
    assert listed_for(centre(east_cell), 2, bucket_of(west_cell))
    assert listed_for(centre(west_cell), 2, bucket_of(east_cell))


@pytest.mark.parametrize("lat", [89.99, -89.999, 90.0, -90.0, 89.9, -89.5])
def test_snap_cover_and_distance_work_at_a_pole(lat: float) -> None:
    for lon in (-180.0, -90.0, 0.0, 45.0, 179.99, 180.0):
        for accuracy in (0.0, 1.0, 10.0, 1000.0, 100_000.0):
            cell = snap(lat, lon, accuracy)
            at = centre(cell)
            assert valid_position(at.lat, at.lon)
            assert math.isfinite(distance_km(at, Point(lat, lon)))
            for radius in (1, 2, 3, 50, 499, 500):
                plan = cover(at, radius)
                assert plan.cells or plan.index_cells
                assert bucket_of(cell) in plan.cells or index_of(bucket_of(cell)) in plan.index_cells


@pytest.mark.parametrize("lat", [89.99, -89.999])
def test_people_a_kilometre_apart_near_a_pole_find_each_other(lat: float) -> None:
    # Two phones (10 m accuracy) 1 km apart near a pole, in every direction (so some pairs straddle the pole):
    # the distance between their snapped cells must be one they can search (at most MAX_RADIUS_KM), and each
    # one's cover at the smallest radius that includes the other must reach the other's bucket.
    rng = random.Random(7)
    for _ in range(200):
        a = Point(lat, rng.uniform(-180.0, 180.0))
        b = destination(a, rng.uniform(0.0, 360.0), 1.0)
        assert distance_km(a, b) == pytest.approx(1.0, rel=1e-3)
        a_cell, b_cell = snap(a.lat, a.lon, 10), snap(b.lat, b.lon, 10)
        d = distance_km(centre(a_cell), centre(b_cell))
        assert within(d, MAX_RADIUS_KM), f"{a} -> {a_cell}, {b} -> {b_cell}: snapped {d:.0f} km apart"
        radius = next(edge for edge in BAND_EDGES_KM if within(d, edge))
        assert listed_for(centre(a_cell), radius, bucket_of(b_cell))
        assert listed_for(centre(b_cell), radius, bucket_of(a_cell))


def test_snap_with_device_accuracy_keeps_a_position_near_where_it_is() -> None:
    # Privacy coarsens a position to a cell; it must not move it to another region. With a phone's accuracy
    # (up to 1 km) the cell's centre stays within 200 km of the true position everywhere, poles included
    # (the coarsest privacy cell, precision 3 above 88 degrees, is about 156 km tall).
    rng = random.Random(11)
    for n in range(5000):
        lat = rng.uniform(-90.0, 90.0) if n % 2 else rng.choice((-1.0, 1.0)) * rng.uniform(85.0, 90.0)
        lon = rng.uniform(-180.0, 180.0)
        accuracy = rng.uniform(1.0, 1000.0)
        cell = snap(lat, lon, accuracy)
        moved = distance_km(Point(lat, lon), centre(cell))
        # Above POLAR_CAP everyone shares the cap cell, whose centre is within about 2 degrees.
        bound = 250 if abs(lat) >= POLAR_CAP else 200
        assert moved < bound, f"snap({lat}, {lon}, {accuracy:.0f} m) = {cell!r}, {moved:.0f} km away"


@pytest.mark.parametrize("seed", [21, 22])
def test_people_a_few_hundred_metres_apart_are_within_two_km(seed: int) -> None:
    rng = random.Random(seed)
    trials = 0
    while trials < 3000:
        # Everywhere people live, up to 80 degrees (Longyearbyen is at 78), row borders included.
        a = Point(rng.uniform(-80.0, 80.0) if trials % 4 else rng.choice((-1, 1)) * rng.uniform(59.5, 60.5),
                  rng.uniform(-180.0, 180.0))
        b = destination(a, rng.uniform(0.0, 360.0), rng.uniform(0.1, 0.5))
        if abs(b.lat) >= 80:
            continue
        trials += 1
        a_cell = snap(a.lat, a.lon, rng.uniform(1.0, 100.0))
        b_cell = snap(b.lat, b.lon, rng.uniform(1.0, 100.0))
        d = distance_km(centre(a_cell), centre(b_cell))
        assert within(d, 2), (a, b, a_cell, b_cell, d)
        if trials % 10 == 0:
            assert listed_for(centre(a_cell), 2, bucket_of(b_cell))


# --- privacy of snapped positions ---------------------------------------------------------------------------


def test_snap_is_never_finer_than_the_privacy_cell_nor_the_accuracy() -> None:
    rng = random.Random(31)
    for n in range(20_000):
        if n % 3 == 0:
            edge = rng.choice((60.0, 80.0, 88.0))
            lat = rng.choice((-1.0, 1.0)) * rng.uniform(edge - 0.1, edge + 0.1)
        else:
            lat = rng.uniform(-90.0, 90.0)
        lon = rng.uniform(-180.0, 180.0)
        accuracy = 0.0 if n % 7 == 0 else 10 ** rng.uniform(0.0, 5.0)
        cell = snap(lat, lon, accuracy)
        assert 1 <= len(cell) <= privacy_precision(lat), (lat, cell)
        if abs(lat) >= POLAR_CAP:  # one shared cap cell per pole, whatever the longitude
            assert cell == snap(math.copysign(89.999, lat), 0.0, 1.0), (lat, lon, cell)
            continue
        assert str(pygeohash.encode(lat, lon, len(cell))) == cell  # the cell holds the position
        height, width = cell_sides_km(cell)
        if len(cell) > 1:
            assert min(height, width) >= accuracy / 1000, (lat, lon, accuracy, cell, height, width)
        # Wide enough where people live: 0.6 km up to 60 degrees, still 0.2 km up to 80.
        if abs(lat) < 80:
            assert min(height, width) >= (0.6 if abs(lat) < 60 else 0.2), (lat, lon, accuracy, cell, height, width)


def test_privacy_cells_at_the_row_borders() -> None:
    for lat, precision in ((59.9999, 6), (60.0, 6), (79.9999, 6), (80.0, 5), (87.9999, 5), (88.0, 3)):
        for sign in (1.0, -1.0):
            assert len(snap(sign * lat, 12.5, 1.0)) == precision
    # The finest privacy cell, at the equator and just below 60 degrees: about 0.6 km tall, 1.2 km and 0.6 km wide.
    height, width = cell_sides_km(snap(0.0, 0.0, 1.0))
    assert height == pytest.approx(0.61, abs=0.01) and width == pytest.approx(1.22, abs=0.01)
    height, width = cell_sides_km(snap(59.999, 0.0, 1.0))
    assert min(height, width) >= 0.6


def test_coarse_accuracy_gives_a_coarse_cell() -> None:
    # An IP position good to 25 km is never said finer than 25 km.
    for lat in (0.0, 30.0, -45.0, 59.0, 70.0):
        height, width = cell_sides_km(snap(lat, 10.0, 25_000.0))
        assert min(height, width) >= 25


# --- distances and bands ------------------------------------------------------------------------------------


def test_distance_km() -> None:
    a, b = Point(10.0, 20.0), Point(-30.0, 100.0)
    assert distance_km(a, a) == 0
    assert distance_km(a, b) == pytest.approx(distance_km(b, a))
    assert distance_km(Point(0.0, 0.0), Point(0.0, 1.0)) == pytest.approx(KM_PER_DEGREE)
    assert distance_km(Point(0.0, 179.5), Point(0.0, -179.5)) == pytest.approx(KM_PER_DEGREE)
    assert distance_km(Point(90.0, 0.0), Point(90.0, 123.0)) == pytest.approx(0.0, abs=1e-9)
    assert distance_km(Point(0.0, 0.0), Point(0.0, 180.0)) == pytest.approx(math.pi * EARTH_KM)
    rng = random.Random(41)
    for _ in range(500):
        start = Point(rng.uniform(-89.0, 89.0), rng.uniform(-180.0, 180.0))
        km = rng.uniform(0.01, 600.0)
        assert distance_km(start, destination(start, rng.uniform(0.0, 360.0), km)) == pytest.approx(km, rel=1e-6)


def test_bands_follow_the_edges() -> None:
    assert BAND_EDGES_KM == (1, 2, 5, 10, 20, 50, 100, 200, 500)
    assert [band_label(b) for b in range(len(BAND_EDGES_KM) + 1)] == LABELS
    for band, edge in enumerate(BAND_EDGES_KM):
        assert band_of(edge - 1e-6) == band
        assert band_of(edge) == band + 1
    assert band_of(0.0) == 0
    assert band_of(10_000.0) == len(BAND_EDGES_KM)
    rng = random.Random(43)
    for _ in range(2000):
        d = rng.uniform(0.0, 700.0)
        band = band_of(d)
        low = 0 if band == 0 else BAND_EDGES_KM[band - 1]
        high = BAND_EDGES_KM[band] if band < len(BAND_EDGES_KM) else math.inf
        assert low <= d < high
        assert band_label(band) == LABELS[band]


def test_a_radius_counts_in_whole_bands() -> None:
    def labels_within(radius: float) -> list[str]:
        return [band_label(b) for b in range(radius_band(radius) + 1)]

    assert labels_within(1) == ["under 1 km"]
    assert labels_within(0.5) == ["under 1 km"]
    assert labels_within(2) == ["under 1 km", "1-2 km"]
    assert labels_within(3) == ["under 1 km", "1-2 km", "2-5 km"]
    assert labels_within(5) == ["under 1 km", "1-2 km", "2-5 km"]
    assert labels_within(6) == LABELS[:4]
    assert labels_within(MAX_RADIUS_KM) == LABELS[:-1]
    assert within(0.999, 1) and not within(1.0, 1)
    assert within(1.999, 2) and not within(2.0, 2)
    assert within(4.999, 3) and not within(5.0, 3)
    assert within(499.0, 500) and not within(500.0, 500)


def test_kept_drops_only_cells_wholly_out_of_reach() -> None:
    rng = random.Random(47)
    for _ in range(300):
        at = centre(snap(rng.uniform(-85.0, 85.0), rng.uniform(-180.0, 180.0), 10))
        radius = rng.randint(1, 100)
        reach = BAND_EDGES_KM[radius_band(radius)]
        cells = [str(pygeohash.encode(p.lat, p.lon, 5))
                 for p in (destination(at, rng.uniform(0, 360), rng.uniform(0, 2 * reach)) for _ in range(30))]
        result = kept(at, radius, cells)
        assert len(set(result)) == len(result) and set(result) <= set(cells)
        for cell in set(cells) - set(result):
            # A dropped cell: neither its centre nor any corner is within reach.
            found = pygeohash.decode_exactly(cell)
            for s in (-1, 0, 1):
                for t in (-1, 0, 1):
                    corner = Point(found.latitude + s * found.latitude_error,
                                   found.longitude + t * found.longitude_error)
                    assert distance_km(at, corner) >= reach
