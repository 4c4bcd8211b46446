import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import pygeohash

EARTH_KM = 6371.0088
_KM_PER_DEGREE = math.pi * EARTH_KM / 180

# Geohash cells narrow towards the poles, so precisions depend on latitude: each row is
# (|latitude| below, precision). Privacy cells are 0.61 km tall everywhere people live, and 1.22 km
# wide at the equator, 0.61 km at 60 degrees, 0.21 km at 80. A coarser cell at high latitudes would
# keep them wider but put neighbours a few hundred metres apart up to 4.9 km apart, out of a 2 km
# radius; towns up there are small and few, so the rule for neighbours wins. Bucket cells stay a
# few km wide so a radius never needs thousands of them.
_PRIVACY = ((80.0, 6), (88.0, 5), (math.inf, 3))
_BUCKETS = ((60.0, 5), (80.0, 4), (88.0, 3), (math.inf, 2))
# A radius needing more bucket cells than this reads a coarse index of non-empty cells first.
MAX_DIRECT_CELLS = 64
INDEX_LEVELS_UP = 2

# Distance bands, in km: every distance about another person is one of these, never finer.
BAND_EDGES_KM = (1, 2, 5, 10, 20, 50, 100, 200, 500)
MAX_RADIUS_KM = BAND_EDGES_KM[-1]


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


def _precision(table: tuple[tuple[float, int], ...], lat: float) -> int:
    return next(p for edge, p in table if abs(lat) < edge)


def _cell_size_km(precision: int, lat: float, lon: float) -> tuple[float, float]:
    """(height, width) of the cell holding a point, its width taken at its narrower edge."""
    found = pygeohash.decode_exactly(pygeohash.encode(lat, lon, precision))
    poleward = abs(found.latitude) + found.latitude_error
    # A cell touching a pole narrows to a point: its equatorward edge is the one that counts.
    edge = poleward if poleward < 90 else abs(found.latitude) - found.latitude_error
    return (2 * found.latitude_error * _KM_PER_DEGREE,
            2 * found.longitude_error * _KM_PER_DEGREE * math.cos(math.radians(edge)))


def cell_size_km(cell: str) -> float:
    """The larger side of a cell where it is: what a person's position is rounded to."""
    at = centre(cell)
    return max(_cell_size_km(len(cell), at.lat, at.lon))


# Above this latitude everyone shares one cap cell per pole: geohash cells there are slivers that
# meet at the pole, so two people a kilometre apart could otherwise land in cells far apart.
POLAR_CAP = 88.0


_CAPS = {str(pygeohash.encode(sign * 89.999, 0.0, _precision(_PRIVACY, sign * 90))): Point(sign * 90.0, 0.0)
         for sign in (1.0, -1.0)}
_CAP_OF = {point.lat > 0: cell for cell, point in _CAPS.items()}


def snap(lat: float, lon: float, accuracy_m: float) -> str:
    """The cell that stands for a position: never finer than the privacy cell, nor than its accuracy."""
    if abs(lat) >= POLAR_CAP:
        return _CAP_OF[lat > 0]
    precision = _precision(_PRIVACY, lat)
    accuracy_km = accuracy_m / 1000
    while precision > 1 and min(_cell_size_km(precision, lat, lon)) < accuracy_km:
        precision -= 1
    return str(pygeohash.encode(lat, lon, precision))


@lru_cache(maxsize=1 << 16)  # ranking asks for the same cells' centres over and over
def centre(cell: str) -> Point:
    if cell in _CAPS:
        return _CAPS[cell]  # a cap stands for its pole
    found = pygeohash.decode_exactly(cell)
    return Point(found.latitude, found.longitude)


def bucket_of(cell: str) -> str:
    """The bucket a located person is listed in: the bucket cell holding their cell's centre."""
    at = centre(cell)
    return str(pygeohash.encode(at.lat, at.lon, _precision(_BUCKETS, at.lat)))


def distance_km(a: Point, b: Point) -> float:
    # Haversine; longitude differences wrap by themselves through sin().
    dlat, dlon = math.radians(b.lat - a.lat), math.radians(b.lon - a.lon)
    h = (math.sin(dlat / 2) ** 2
         + math.cos(math.radians(a.lat)) * math.cos(math.radians(b.lat)) * math.sin(dlon / 2) ** 2)
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def band_of(distance: float) -> int:
    """Index into BAND_EDGES_KM of the first edge above the distance; len(BAND_EDGES_KM) past the last."""
    return bisect_right(BAND_EDGES_KM, distance)  # the edges are sorted; a NaN lands past the last, too


def band_label(band: int) -> str:
    if band == 0:
        return f"under {BAND_EDGES_KM[0]} km"
    if band >= len(BAND_EDGES_KM):
        return f"over {BAND_EDGES_KM[-1]} km"
    return f"{BAND_EDGES_KM[band - 1]}-{BAND_EDGES_KM[band]} km"


def radius_band(radius_km: float) -> int:
    """A radius counts in whole bands: someone is within it when their band is at most this one."""
    return band_of(max(radius_km, BAND_EDGES_KM[0]) - 1e-9)


def within(distance: float, radius_km: float) -> bool:
    return band_of(distance) <= radius_band(radius_km)


@dataclass(frozen=True)
class Cover:
    cells: tuple[str, ...]  # bucket cells to read, nearest first
    index_cells: tuple[str, ...]  # coarse cells whose listed children must be looked up, then kept()


def _bucket_rows() -> list[tuple[float, float, int]]:
    # The latitude rows of _BUCKETS on both hemispheres: (-90, -88, 2), (-88, -80, 3), ..., (88, 90, 2).
    edges = [edge for edge, _ in _BUCKETS[:-1]]
    precisions = [p for _, p in _BUCKETS]
    north = [(lo, hi, p) for lo, hi, p in zip([0.0, *edges], [*edges, 90.0], precisions, strict=True)]
    south = [(-hi, -lo, p) for lo, hi, p in reversed(north)]
    middle = (south[-1][0], north[0][1], north[0][2])
    return [*south[:-1], middle, *north[1:]]


_ROWS = _bucket_rows()


def _bands(lat_lo: float, lat_hi: float) -> Iterable[tuple[float, float, int]]:
    for lo, hi, precision in _ROWS:
        if max(lo, lat_lo) <= min(hi, lat_hi):
            yield max(lo, lat_lo), min(hi, lat_hi), precision


def _grid_span(precision: int, lat_lo: float, lat_hi: float, lon_ranges: list[tuple[float, float]]
               ) -> tuple[list[int], list[int], float, float]:
    lat_bits, lon_bits = 5 * precision // 2, (5 * precision + 1) // 2
    rows, cols = 2**lat_bits, 2**lon_bits
    height, width = 180 / rows, 360 / cols
    row_ids = list(range(int((lat_lo + 90) / height), min(rows - 1, int((lat_hi + 90) / height)) + 1))
    col_ids: list[int] = []
    for lon_lo, lon_hi in lon_ranges:
        col_ids += range(int((lon_lo + 180) / width), min(cols - 1, int((lon_hi + 180) / width)) + 1)
    return row_ids, list(dict.fromkeys(col_ids)), height, width


def _grid(precision: int, lat_lo: float, lat_hi: float, lon_ranges: list[tuple[float, float]]) -> list[str]:
    rows, cols, height, width = _grid_span(precision, lat_lo, lat_hi, lon_ranges)
    return [str(pygeohash.encode(-90 + (r + 0.5) * height, -180 + (c + 0.5) * width, precision))
            for r in rows for c in cols]


def _lon_ranges(at: Point, radius_km: float) -> list[tuple[float, float]]:
    angle = radius_km / EARTH_KM
    spread = math.sin(angle) / max(math.cos(math.radians(at.lat)), 1e-12)
    if at.lat + math.degrees(angle) >= 90 or at.lat - math.degrees(angle) <= -90 or spread >= 1:
        return [(-180.0, 180.0)]  # the circle holds a pole or is wider than half the world
    half = math.degrees(math.asin(spread))
    lo, hi = at.lon - half, at.lon + half
    if lo < -180:
        return [(lo + 360, 180.0), (-180.0, hi)]
    if hi > 180:
        return [(lo, 180.0), (-180.0, hi - 360)]
    return [(lo, hi)]


def _reach(at: Point, cell: str) -> float:
    """How far from `at` the nearest point of the cell can be, at most optimistically."""
    found = pygeohash.decode_exactly(cell)
    mid = Point(found.latitude, found.longitude)
    corners = (Point(found.latitude + s * found.latitude_error, found.longitude + t * found.longitude_error)
               for s in (-1, 1) for t in (-1, 1))
    return distance_km(at, mid) - max(distance_km(mid, c) for c in corners)


def kept(at: Point, radius_km: float, cells: Iterable[str]) -> tuple[str, ...]:
    """The cells that may hold someone within the radius, nearest first."""
    # Triangle inequality on cell centres: a cell whose every point is farther than the radius
    # holds nobody within it; everything else is kept, so no one in range is missed.
    limit = BAND_EDGES_KM[radius_band(min(radius_km, MAX_RADIUS_KM))]
    reach = {cell: _reach(at, cell) for cell in set(cells)}
    return tuple(sorted((c for c, r in reach.items() if r < limit), key=lambda c: (reach[c], c)))


@lru_cache(maxsize=4096)  # viewers of a city share a few hundred cells, and a cover is the same for each
def cover(at: Point, radius_km: float) -> Cover:
    edge = BAND_EDGES_KM[radius_band(min(radius_km, MAX_RADIUS_KM))]
    degrees = math.degrees(edge / EARTH_KM)
    lon_ranges = _lon_ranges(at, edge)
    direct: list[str] = []
    index: list[str] = []
    for lat_lo, lat_hi, precision in _bands(max(-90.0, at.lat - degrees), min(90.0, at.lat + degrees)):
        rows, cols, _, _ = _grid_span(precision, lat_lo, lat_hi, lon_ranges)
        if len(rows) * len(cols) <= MAX_DIRECT_CELLS or precision <= INDEX_LEVELS_UP:
            direct += _grid(precision, lat_lo, lat_hi, lon_ranges)
        else:
            index += _grid(precision - INDEX_LEVELS_UP, lat_lo, lat_hi, lon_ranges)
    return Cover(kept(at, radius_km, direct), kept(at, radius_km, index))


def index_of(bucket: str) -> str:
    return bucket[:-INDEX_LEVELS_UP]


def valid_position(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
