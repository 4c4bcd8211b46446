import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from domain import locations
from domain.errors import Code, DomainError, InputError, LimitReached
from domain.geo import bucket_of, centre, distance_km, snap
from domain.locations import LocationDeps, LocationLimits, Source, Whereabouts

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LISBON, PORTO, TOKYO = (38.7223, -9.1393), (41.1579, -8.6291), (35.6762, 139.6503)


class FakeLocations:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, tuple[Whereabouts, str | None, str | None]] = {}

    async def get(self, user_id: uuid.UUID) -> Whereabouts | None:
        row = self.rows.get(user_id)
        return row[0] if row else None

    async def save(self, where: Whereabouts, cell: str | None, bucket: str | None, now: datetime) -> None:
        self.rows[where.user_id] = (where, cell, bucket)


class FakeQuotas:
    def __init__(self) -> None:
        self.taken: dict[tuple[uuid.UUID, str], dict[str, datetime]] = {}

    async def take(self, user_id: uuid.UUID, kind: str, limit: int, window: timedelta, now: datetime,
                   token: str) -> int:
        mine = {t: at for t, at in self.taken.get((user_id, kind), {}).items() if now - at < window}
        self.taken[(user_id, kind)] = mine
        if token in mine:
            return 0
        if len(mine) >= limit:
            return max(1, math.ceil((min(mine.values()) + window - now).total_seconds()))
        mine[token] = now
        return 0

    async def give_back(self, user_id: uuid.UUID, kind: str, token: str) -> None:
        self.taken.get((user_id, kind), {}).pop(token, None)


@dataclass
class FakeGeoIp:
    answers: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def locate(self, ip: str) -> tuple[float, float, int] | None:
        return self.answers.get(ip)


class FakeActivity:
    def __init__(self) -> None:
        self.touched: list[uuid.UUID] = []

    async def touch(self, user_id: uuid.UUID, now: datetime) -> None:
        self.touched.append(user_id)


@dataclass
class World:
    repo: FakeLocations = field(default_factory=FakeLocations)
    geoip: FakeGeoIp = field(default_factory=FakeGeoIp)
    activity: FakeActivity = field(default_factory=FakeActivity)
    limits: LocationLimits = field(default_factory=LocationLimits)

    @property
    def deps(self) -> LocationDeps:
        return LocationDeps(self.repo, QUOTAS, self.geoip, self.activity, self.limits)


QUOTAS = FakeQuotas()


@pytest.fixture
def w() -> World:
    QUOTAS.taken.clear()
    return World()


async def test_a_device_position_is_stored_as_a_cell_and_its_bucket(w: World) -> None:
    ann = uuid.uuid4()
    where = await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    assert where.device_cell == snap(*LISBON, 15) and where.device_at == NOW
    _, cell, bucket = w.repo.rows[ann]
    assert cell == where.device_cell and bucket == bucket_of(where.device_cell)
    assert distance_km(centre(cell), centre(snap(*LISBON, 15))) == 0
    assert w.activity.touched == [ann]


@pytest.mark.parametrize(("lat", "lon", "accuracy", "field_name"), [
    (90.01, 0, 10, "latitude"), (math.nan, 0, 10, "latitude"), (0, math.inf, 10, "longitude"),
    (0, -181, 10, "longitude"), (0, 0, 0, "accuracyMeters"), (0, 0, math.nan, "accuracyMeters"),
    (0, 0, 100_001, "accuracyMeters"),
])
async def test_impossible_values_are_refused(w: World, lat: float, lon: float, accuracy: float,
                                             field_name: str) -> None:
    with pytest.raises(InputError) as refused:
        await locations.update_from_device(w.deps, uuid.uuid4(), lat, lon, accuracy, NOW)
    assert refused.value.code is Code.INVALID_LOCATION and refused.value.field == field_name
    assert not w.repo.rows


async def test_the_device_beats_the_ip_while_fresh(w: World) -> None:
    ann = uuid.uuid4()
    w.geoip.answers["203.0.113.9"] = (*PORTO, 20)
    await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    await locations.update_from_ip(w.deps, ann, "203.0.113.9", NOW + timedelta(hours=2))
    where, cell, _ = w.repo.rows[ann]
    assert cell == snap(*LISBON, 15) and where.ip_cell == snap(*PORTO, 20_000) and where.ip_accuracy_km == 20
    later = NOW + timedelta(days=8)
    await locations.update_from_ip(w.deps, ann, "203.0.113.9", later)
    assert w.repo.rows[ann][1] == snap(*PORTO, 20_000)  # the device position has gone stale
    assert w.repo.rows[ann][0].current(later, w.limits.device_fresh_for) == (snap(*PORTO, 20_000), Source.IP, later)


async def test_an_ip_position_is_never_finer_than_its_accuracy(w: World) -> None:
    ann = uuid.uuid4()
    w.geoip.answers["203.0.113.9"] = (*TOKYO, 50)
    await locations.update_from_ip(w.deps, ann, "203.0.113.9", NOW)
    cell = w.repo.rows[ann][1]
    assert cell is not None and len(cell) <= 3  # precision 3 cells are about 156 km: coarser than 50 km


@pytest.mark.parametrize("answer", [None, (10.0, 10.0, 101), (95.0, 10.0, 5)])
async def test_unknown_or_vague_addresses_change_nothing(w: World, answer: tuple[float, float, int] | None) -> None:
    ann = uuid.uuid4()
    await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    before = w.repo.rows[ann]
    if answer is not None:
        w.geoip.answers["198.51.100.1"] = answer
    for ip in ("198.51.100.1", None):
        await locations.update_from_ip(w.deps, ann, ip, NOW + timedelta(days=9))
    assert w.repo.rows[ann] == before
    stranger = uuid.uuid4()
    await locations.update_from_ip(w.deps, stranger, "198.51.100.1", NOW)
    assert stranger not in w.repo.rows  # never a default point


async def test_impossible_travel_is_refused(w: World) -> None:
    ann = uuid.uuid4()
    await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    with pytest.raises(DomainError) as refused:
        await locations.update_from_device(w.deps, ann, *TOKYO, 15, NOW + timedelta(hours=1))
    assert refused.value.code is Code.IMPOSSIBLE_TRAVEL
    # Lisbon to Porto (275 km) in ten minutes is faster than any airliner; in three hours it is a train ride.
    with pytest.raises(DomainError):
        await locations.update_from_device(w.deps, ann, *PORTO, 15, NOW + timedelta(minutes=10))
    await locations.update_from_device(w.deps, ann, *PORTO, 15, NOW + timedelta(hours=3))


async def test_updates_per_hour_and_cells_per_day_are_limited(w: World) -> None:
    w.limits = LocationLimits(updates_per_hour=3, distinct_cells_per_day=2)
    ann = uuid.uuid4()
    for minute in range(3):
        await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW + timedelta(minutes=minute))
    with pytest.raises(LimitReached) as limited:
        await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW + timedelta(minutes=3))
    assert limited.value.code is Code.RATE_LIMITED and 0 < limited.value.retry_after_seconds <= 3600
    start = NOW + timedelta(hours=2)
    await locations.update_from_device(w.deps, ann, 38.7300, -9.1500, 15, start)  # a second cell
    with pytest.raises(LimitReached):
        await locations.update_from_device(w.deps, ann, 38.7400, -9.1600, 15, start + timedelta(minutes=1))
    await locations.update_from_device(w.deps, ann, *LISBON, 15, start + timedelta(minutes=2))  # a known cell


async def test_limits_can_be_lifted_for_an_attacker_test(w: World) -> None:
    w.limits = LocationLimits(updates_per_hour=1, distinct_cells_per_day=1, enforce=False)
    ann = uuid.uuid4()
    await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    await locations.update_from_device(w.deps, ann, *TOKYO, 15, NOW + timedelta(seconds=1))
    assert w.repo.rows[ann][1] == snap(*TOKYO, 15)


async def test_small_fast_steps_do_not_add_up_to_a_flight(w: World) -> None:
    ann = uuid.uuid4()
    await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    moved = 0
    with pytest.raises(DomainError) as refused:
        for step in range(1, 21):  # about 9 km north each time, a few milliseconds apart
            await locations.update_from_device(w.deps, ann, LISBON[0] + 0.08 * step, LISBON[1], 15,
                                               NOW + timedelta(milliseconds=5 * step))
            moved = step
    assert refused.value.code is Code.IMPOSSIBLE_TRAVEL and moved == 0
    # A few hundred metres of jitter between cells is no travel at all.
    await locations.update_from_device(w.deps, ann, LISBON[0] + 0.004, LISBON[1] + 0.004, 15,
                                       NOW + timedelta(seconds=1))


async def test_updates_in_the_same_millisecond_each_count(w: World) -> None:
    w.limits = LocationLimits(updates_per_hour=3)
    ann = uuid.uuid4()
    for _ in range(3):
        await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
    with pytest.raises(LimitReached):
        await locations.update_from_device(w.deps, ann, *LISBON, 15, NOW)
