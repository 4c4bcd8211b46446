"""An attacker with every location limit lifted tries to trilaterate a victim through `nearbyCandidates`.

Every major dating app leaked positions through distances, bands, sort order or filters. Here a real
API process (LOCATION_LIMITS=off: no rate limit, no impossible-travel check, no daily cap on distinct
cells) and a real location-updater face an attacker who moves a few sybil accounts to over a thousand
positions around a victim, varies the radius filter and their own accuracy, and records everything
the server says about the victim: presence, distance band and rank among the people returned.

The analysis then keeps every hypothetical victim position consistent with every answer, predicting
each answer the way the server decides it (snapped cells, cell centres, haversine, whole bands, tie
breaks). If the server answered from anything finer than the victim's privacy cell, the true
position would fall out of that region, or a twin placed elsewhere in the same cell would get other
answers: both are asserted against.
"""

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import httpx
import pygeohash
import pytest

from domain import geo
from domain.model import Discovery
from domain.ranking import tie_break
from infra.settings import Settings
from schema.nearby import BANDS
from tests.conftest import settings_env
from tests.e2e.conftest import Account, running_server, sign_up
from tests.e2e.test_nearby import LOCATE, offset

NEARBY = """query($filter: NearbyFilter) {
  nearbyCandidates(first: 100, filter: $filter) {
    edges { cursor node { person { id } whyShown { distance distanceLabel activeRecently } } }
    pageInfo { hasNextPage endCursor } } }"""
HIDE = "mutation { updateProfile(input: {visibility: HIDDEN}) { __typename } }"

VICTIM = (38.7106, -9.1422)  # Chiado, Lisbon
ACCURACY_M = 5.0  # the victim's phone, and most of the attacker's claims: the finest cell there is
COARSE_ACCURACY_M = 1500.0  # every few moves the attacker claims a coarse fix: other cell centres
COARSE_EVERY = 7
DECOYS = ((350, 20), (800, 140), (1300, 250), (2100, 330), (3200, 75), (4700, 200), (7500, 110))  # metres, bearing
RADII_KM = (1, 2, 3, 5, 10)
SYBILS = 8
POSITIONS = 1500
NEAREST_M, FARTHEST_M = 50.0, 5000.0
REPLAY_EVERY = 1  # the twin pass replays every probe of the first (2: every second one)
GRID_STEP_M = 20.0
GRID_REACH_KM = 3.0
KM_PER_DEGREE = math.pi * geo.EARTH_KM / 180
VICTIM_MAX_KM = Discovery().max_distance_km  # the victim keeps the default discovery settings


@pytest.fixture(scope="module")
def open_api(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(settings, tmp_path_factory.mktemp("attack-api"), LOCATION_LIMITS="off") as base:
        yield base


@pytest.fixture(scope="module")
def updater(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("attack-updater") / "updater.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "location-updater"],
                                env={**os.environ, **settings_env(settings)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()[-3000:]


class Api:
    """One HTTP connection pool for the whole attack; every response text is kept for the leak check."""

    def __init__(self, base: str, http: httpx.AsyncClient) -> None:
        self.base = base
        self.http = http
        self.texts: list[str] = []

    async def call(self, query: str, variables: dict[str, Any], who: Account) -> dict[str, Any]:
        response = await self.http.post(f"{self.base}/graphql", json={"query": query, "variables": variables},
                                        headers={"authorization": f"Bearer {who.access_token}"})
        assert response.status_code == 200, response.text
        self.texts.append(response.text)
        body: dict[str, Any] = response.json()
        assert "errors" not in body, body
        return body

    async def locate(self, who: Account, lat: float, lon: float, accuracy_m: float) -> None:
        body = await self.call(LOCATE, {"lat": lat, "lon": lon, "acc": accuracy_m}, who)
        result = body["data"]["updateLocation"]
        assert result["__typename"] == "MyLocation", result  # no limit may stand in the attacker's way

    async def nearby(self, who: Account, radius_km: int) -> list[dict[str, Any]]:
        body = await self.call(NEARBY, {"filter": {"maxDistanceKm": radius_km}}, who)
        page = body["data"]["nearbyCandidates"]
        assert not page["pageInfo"]["hasNextPage"], "everyone in reach fits on one page"
        edges: list[dict[str, Any]] = page["edges"]
        return edges


@dataclass(frozen=True)
class Probe:
    sybil: int  # which of the attacker's accounts makes this move
    lat: float
    lon: float
    accuracy_m: float
    radius_km: int


@dataclass(frozen=True)
class Answer:
    """What one answer says about the victim."""

    present: bool
    band: str | None
    rank: int | None  # position among the people the attacker placed or hunts (victim and decoys)


@dataclass(frozen=True)
class Seen:
    victim: Answer
    label: str | None
    position: int | None  # position among everyone returned
    decoys: tuple[str | None, ...]  # each decoy's band, None when absent
    day: date  # tie breaks change daily


@dataclass(frozen=True)
class Context:
    """What the attacker knows when predicting one answer: everything but the victim's cell."""

    here: geo.Point  # the centre of the cell the server placed the attacker in
    radius_km: int
    victim_tie: int
    decoy_keys: tuple[tuple[int, int] | None, ...]  # (band, tie break) of each decoy in the list, None if not


def spiral(count: int) -> list[tuple[float, float]]:
    """Golden-angle spiral, distances growing geometrically: fine steps near the victim, coarse far out."""
    golden = 180 * (3 - math.sqrt(5))
    return [offset(*VICTIM, NEAREST_M * (FARTHEST_M / NEAREST_M) ** (i / (count - 1)), (i * golden) % 360)
            for i in range(count)]


def probes() -> list[Probe]:
    return [Probe(i % SYBILS, lat, lon, COARSE_ACCURACY_M if i % COARSE_EVERY == COARSE_EVERY - 1 else ACCURACY_M,
                  RADII_KM[i % len(RADII_KM)]) for i, (lat, lon) in enumerate(spiral(POSITIONS))]


def observe(edges: list[dict[str, Any]], victim: Account, decoys: Sequence[Account], day: date) -> Seen:
    ids = [e["node"]["person"]["id"] for e in edges]
    why = {e["node"]["person"]["id"]: e["node"]["whyShown"] for e in edges}
    known = [i for i in ids if i in {victim.id, *(d.id for d in decoys)}]
    assert all(why[i]["activeRecently"] for i in known), "the model below assumes everyone known ranks alike"
    decoy_bands = tuple(why[d.id]["distance"] if d.id in why else None for d in decoys)
    if victim.id not in why:
        return Seen(Answer(False, None, None), None, None, decoy_bands, day)
    return Seen(Answer(True, why[victim.id]["distance"], known.index(victim.id)), why[victim.id]["distanceLabel"],
                ids.index(victim.id), decoy_bands, day)


async def attack(api: Api, sybils: Sequence[Account], plan: Sequence[Probe], victim: Account,
                 decoys: Sequence[Account]) -> list[Seen]:
    """Each sybil moves and asks in turn; sybils run side by side (each answer depends on its own cell only)."""
    seen: dict[int, Seen] = {}

    async def play(k: int) -> None:
        for i, probe in enumerate(plan):
            if probe.sybil == k:
                await api.locate(sybils[k], probe.lat, probe.lon, probe.accuracy_m)
                day = datetime.now(UTC).date()
                seen[i] = observe(await api.nearby(sybils[k], probe.radius_km), victim, decoys, day)

    await asyncio.gather(*(play(k) for k in range(len(sybils))))
    return [seen[i] for i in range(len(plan))]


def listed(d: float, radius_km: int) -> bool:
    # Both ways, as domain.ranking.rank decides: within the viewer's radius and within the other's own.
    return geo.within(d, radius_km) and geo.within(d, VICTIM_MAX_KM)


def contexts(plan: Sequence[Probe], seen: Sequence[Seen], sybils: Sequence[Account], victim: Account,
             decoy_cells: Sequence[str], decoys: Sequence[Account]) -> list[Context]:
    found = []
    for probe, s in zip(plan, seen, strict=True):
        here = geo.centre(geo.snap(probe.lat, probe.lon, probe.accuracy_m))
        viewer = uuid.UUID(sybils[probe.sybil].id)
        keys: list[tuple[int, int] | None] = []
        for cell, decoy in zip(decoy_cells, decoys, strict=True):
            d = geo.distance_km(here, geo.centre(cell))
            keys.append((geo.band_of(d), tie_break(viewer, s.day, uuid.UUID(decoy.id)))
                        if listed(d, probe.radius_km) else None)
        found.append(Context(here, probe.radius_km, tie_break(viewer, s.day, uuid.UUID(victim.id)), tuple(keys)))
    return found


def predict(ctx: Context, victim_cell: str) -> Answer:
    """What the server answers about a victim in this cell: bands between cell centres, then rank order.

    Nobody known shares tags with the attacker, all are active and all fit the attacker's own terms, so
    the score differs by band alone and ties break on the viewer's daily hash of the person's id."""
    d = geo.distance_km(ctx.here, geo.centre(victim_cell))
    if not listed(d, ctx.radius_km):
        return Answer(False, None, None)
    key = (geo.band_of(d), ctx.victim_tie)
    return Answer(True, BANDS[key[0]].value, sum(1 for k in ctx.decoy_keys if k is not None and k < key))


def local_km(p: tuple[float, float]) -> tuple[float, float]:
    return ((p[1] - VICTIM[1]) * KM_PER_DEGREE * math.cos(math.radians(VICTIM[0])),
            (p[0] - VICTIM[0]) * KM_PER_DEGREE)


def hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of (lat, lon) points, in a local plane: enough for a few km."""
    ordered = sorted(set(points), key=local_km)

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        (ox, oy), (ax, ay), (bx, by) = local_km(o), local_km(a), local_km(b)
        return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)

    chains: list[list[tuple[float, float]]] = []
    for sequence in (ordered, ordered[::-1]):
        chain: list[tuple[float, float]] = []
        for p in sequence:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        chains.append(chain[:-1])
    return chains[0] + chains[1]


@dataclass(frozen=True)
class Region:
    points: list[tuple[float, float]]
    cells: set[str]
    grid_points: int
    grid_cells: int

    def diameter_km(self) -> float:
        edge = hull(self.points)
        return max(geo.distance_km(geo.Point(*a), geo.Point(*b)) for a in edge for b in edge)

    def extent_km(self) -> tuple[float, float]:
        lats, lons = [p[0] for p in self.points], [p[1] for p in self.points]
        return ((max(lats) - min(lats)) * KM_PER_DEGREE,
                (max(lons) - min(lons)) * KM_PER_DEGREE * math.cos(math.radians(VICTIM[0])))

    def centroid(self) -> geo.Point:
        return geo.Point(sum(p[0] for p in self.points) / len(self.points),
                         sum(p[1] for p in self.points) / len(self.points))


def grid() -> list[tuple[float, float]]:
    lat_step = GRID_STEP_M / 1000 / KM_PER_DEGREE
    lon_step = lat_step / math.cos(math.radians(VICTIM[0]))
    steps = math.ceil(GRID_REACH_KM * 1000 / GRID_STEP_M)
    truth = geo.Point(*VICTIM)
    return [(VICTIM[0] + i * lat_step, VICTIM[1] + j * lon_step)
            for i in range(-steps, steps + 1) for j in range(-steps, steps + 1)
            if geo.distance_km(truth, geo.Point(VICTIM[0] + i * lat_step, VICTIM[1] + j * lon_step)) <= GRID_REACH_KM]


def feasible(ctxs: Sequence[Context], answers: Sequence[Answer], points: Sequence[tuple[float, float]]) -> Region:
    """The hypothetical victim positions that every answer agrees with."""
    verdict: dict[str, bool] = {}
    kept: list[tuple[float, float]] = []
    for lat, lon in points:
        cell = geo.snap(lat, lon, ACCURACY_M)
        if cell not in verdict:
            verdict[cell] = all(predict(ctx, cell) == answer for ctx, answer in zip(ctxs, answers, strict=True))
        if verdict[cell]:
            kept.append((lat, lon))
    return Region(kept, {c for c, ok in verdict.items() if ok}, len(points), len(verdict))


def cell_box(cell: str) -> tuple[float, float, float, float]:
    found = pygeohash.decode_exactly(cell)
    return (found.latitude - found.latitude_error, found.latitude + found.latitude_error,
            found.longitude - found.longitude_error, found.longitude + found.longitude_error)


def twin_of(cell: str) -> tuple[float, float]:
    """The corner of the victim's cell farthest from the victim, a few percent inside."""
    south, north, west, east = cell_box(cell)
    inset_lat, inset_lon = 0.03 * (north - south), 0.03 * (east - west)
    corners = [(lat, lon) for lat in (south + inset_lat, north - inset_lat)
               for lon in (west + inset_lon, east - inset_lon)]
    return max(corners, key=lambda c: geo.distance_km(geo.Point(*VICTIM), geo.Point(*c)))


def in_cell(cell: str, p: tuple[float, float]) -> bool:
    return geo.snap(p[0], p[1], ACCURACY_M) == cell


def leaks(text: str, needles: Sequence[str]) -> list[str]:
    """Needles found in a response, cursors decoded first (they are signed, not encrypted)."""
    opened: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("cursor", "endCursor") and isinstance(value, str):
                    opened.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(text))
    plain = text
    for cursor in opened:
        plain = plain.replace(cursor, "")
        plain += " " + base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("latin-1")
    return [n for n in needles if n.lower() in plain.lower()]


async def changes_applied(pool: asyncpg.Pool, people: Sequence[Account], *, within_s: float = 20) -> None:
    ids = [uuid.UUID(p.id) for p in people]
    deadline = time.monotonic() + within_s
    while await pool.fetchval("SELECT count(*) FROM discovery_changes WHERE user_id = ANY($1::uuid[])", ids):
        assert time.monotonic() < deadline, "the location updater did not catch up"
        await asyncio.sleep(0.05)


async def test_trilateration_finds_nothing_finer_than_the_privacy_cell(
        open_api: str, updater: None, settings: Settings) -> None:
    started = time.monotonic()
    victim_cell = geo.snap(*VICTIM, ACCURACY_M)
    south, north, west, east = cell_box(victim_cell)
    cell_height_km = (north - south) * KM_PER_DEGREE
    cell_width_km = (east - west) * KM_PER_DEGREE * math.cos(math.radians(VICTIM[0]))
    twin = twin_of(victim_cell)
    assert in_cell(victim_cell, twin)
    decoy_spots = [offset(*VICTIM, metres, bearing) for metres, bearing in DECOYS]
    decoy_cells = [geo.snap(lat, lon, ACCURACY_M) for lat, lon in decoy_spots]
    plan = probes()
    assert len(plan) >= 1000

    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=SYBILS + 2)) as http:
        api = Api(open_api, http)
        victim, *decoys = await asyncio.gather(*(sign_up(open_api) for _ in range(1 + len(DECOYS))))
        sybils = list(await asyncio.gather(*(sign_up(open_api) for _ in range(SYBILS))))
        # Hidden, the sybils never show up in each other's lists: the people returned stay the same
        # from one pass to the next, whatever order the sybils happen to move in.
        for sybil in sybils:
            assert (await api.call(HIDE, {}, sybil))["data"]["updateProfile"]["__typename"] == "Me"
        await api.locate(victim, *VICTIM, ACCURACY_M)
        for decoy, (lat, lon) in zip(decoys, decoy_spots, strict=True):
            await api.locate(decoy, lat, lon, ACCURACY_M)
        await changes_applied(pool, [victim, *decoys, *sybils])

        first_pass = time.monotonic()
        seen = await attack(api, sybils, plan, victim, decoys)
        attack_s = time.monotonic() - first_pass

        # The twin: the same privacy cell, its opposite corner.
        await api.locate(victim, *twin, ACCURACY_M)
        await changes_applied(pool, [victim])
        stored = await pool.fetchrow("SELECT * FROM user_locations WHERE user_id = $1", uuid.UUID(victim.id))
        assert stored is not None and stored["cell"] == victim_cell
        replay = plan[::REPLAY_EVERY]
        second_pass = time.monotonic()
        twin_seen = await attack(api, sybils, replay, victim, decoys)
        replay_s = time.monotonic() - second_pass
    await pool.close()

    # The model must be the server's: for the decoys, whose cells the attacker knows, every band matches.
    ctxs = contexts(plan, seen, sybils, victim, decoy_cells, decoys)
    for ctx, s in zip(ctxs, seen, strict=True):
        assert s.decoys == tuple(None if k is None else BANDS[k[0]].value for k in ctx.decoy_keys), s
        assert s.victim.band is None or s.label == geo.band_label([b.value for b in BANDS].index(s.victim.band))

    # Analysis 1: where can the victim be, given every answer?
    answers = [s.victim for s in seen]
    points = grid()
    region = feasible(ctxs, answers, points)
    # An empty region means the answers depend on something the cell model lacks: a finer position.
    assert region.points, "no hypothetical position agrees with every answer"
    truth = geo.Point(*VICTIM)
    estimate = region.centroid()
    error_km = geo.distance_km(truth, estimate)
    centre_error_km = geo.distance_km(truth, geo.centre(victim_cell))
    twin_error_km = geo.distance_km(geo.Point(*twin), estimate)
    diameter = region.diameter_km()
    north_south, east_west = region.extent_km()
    in_own_cell = [p for p in points if in_cell(victim_cell, p)]
    present = sum(a.present for a in answers)
    print(f"\nvictim {VICTIM} cell {victim_cell}: {cell_height_km:.3f} km high, {cell_width_km:.3f} km wide;"
          f" twin {twin[0]:.5f},{twin[1]:.5f} is {geo.distance_km(truth, geo.Point(*twin)):.3f} km away")
    print(f"observations: {len(seen)} probes by {SYBILS} sybils from {len({(c.here, c.radius_km) for c in ctxs})}"
          f" distinct (cell, radius) pairs; victim shown {present} times,"
          f" bands {sorted({a.band for a in answers if a.band})},"
          f" ranks {sorted({a.rank for a in answers if a.rank is not None})}")
    print(f"feasible: {len(region.points)} of {region.grid_points} grid points ({GRID_STEP_M:.0f} m, within"
          f" {GRID_REACH_KM} km), {len(region.cells)} of {region.grid_cells} cells {sorted(region.cells)};"
          f" extent {north_south:.3f} km N-S x {east_west:.3f} km E-W, diameter {diameter:.3f} km")
    print(f"estimate (centroid) {estimate.lat:.5f},{estimate.lon:.5f}: {error_km:.3f} km from the victim,"
          f" {twin_error_km:.3f} km from the twin; the cell centre is {centre_error_km:.3f} km from the victim")

    kept = set(region.points)
    assert in_cell(victim_cell, VICTIM) and VICTIM in kept, "the true position must be feasible"
    assert in_own_cell and all(p in kept for p in in_own_cell), "the whole privacy cell must stay feasible"
    assert diameter >= cell_height_km, diameter
    # Nothing finer than the cell: the estimate is no nearer the victim than the cell's centre is
    # (up to the grid), and the same for a twin anywhere else in the cell.
    assert error_km >= centre_error_km - GRID_STEP_M / 1000, (error_km, centre_error_km)
    assert twin_error_km >= geo.distance_km(geo.Point(*twin), geo.centre(victim_cell)) - GRID_STEP_M / 1000

    # Analysis 2: the twin hears exactly what the victim heard.
    # (Tie breaks change at midnight UTC: a probe answered on another day is only held to the model.)
    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(seen[::REPLAY_EVERY], twin_seen, strict=True)) if a.day == b.day]
    differing = [(i, a, b) for i, a, b in pairs
                 if (a.victim, a.label, a.position, a.decoys) != (b.victim, b.label, b.position, b.decoys)]
    twin_ctxs = contexts(replay, twin_seen, sybils, victim, decoy_cells, decoys)
    unlike_model = [i for i, (ctx, s) in enumerate(zip(twin_ctxs, twin_seen, strict=True))
                    if predict(ctx, victim_cell) != s.victim]
    print(f"twin replay: {len(twin_seen)} probes ({len(pairs)} on the same day), {len(differing)} answers differ,"
          f" {len(unlike_model)} unlike the model; first pass {attack_s:.1f} s, replay {replay_s:.1f} s,"
          f" total {time.monotonic() - started:.1f} s")
    assert len(pairs) >= 0.9 * len(twin_seen)
    assert not differing, differing[:5]
    assert not unlike_model, unlike_model[:5]

    # No response ever names the victim's position or cell.
    needles = [victim_cell, geo.bucket_of(victim_cell), "latitude", "longitude", "geohash"]
    for lat, lon in (VICTIM, twin, (geo.centre(victim_cell).lat, geo.centre(victim_cell).lon)):
        needles += [f"{lat:.2f}", f"{abs(lon):.2f}"]
    needles = list(dict.fromkeys(needles))
    found = {n for text in api.texts for n in leaks(text, needles)}
    print(f"leak check: {len(api.texts)} responses, needles {needles}: found {sorted(found)}")
    assert not found, found
