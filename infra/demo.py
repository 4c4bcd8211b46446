"""A demo population: people at real cities, each with a real address that the GeoLite2 database
places near their city, so that a fresh `make run` has someone to meet.

Accounts are written in bulk (one password hash for all); positions are stored as a log-in and a
phone would store them (an IP cell as coarse as the database's accuracy, a device cell as coarse as
the phone's), and the location updater's own code fills the discovery buckets from the change
events those rows queue, as it does for everyone.
"""

import asyncio
import ipaddress
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import maxminddb

from domain.geo import bucket_of, snap
from domain.ids import new_id
from domain.locations import Whereabouts
from domain.model import Gender
from infra.db import open_pool
from infra.geoip import MaxMindGeoIp, packaged_database
from infra.population import USER_COLUMNS, City, People, around, cities, cumulative
from infra.redis_client import open_redis
from infra.security import Argon2Hasher
from infra.settings import Settings
from workers.location_updater import LocationUpdater

log = logging.getLogger(__name__)

DEMO_EMAIL, DEMO_PASSWORD = "demo@newfriends.test", "newfriends demo"
DEFAULT_SIZE = 20_000
# A dense share lives in a few metros, so that discovery there has thousands to rank.
METROS = ("Paris", "London", "New York City", "Berlin", "São Paulo")
DENSE_SHARE = 0.3
ADMIRERS = 30  # people near the demo account who liked it already: liking one back makes a match
LOOKUPS = 400_000  # random addresses tried to find each city's (about 3 s)
DEVICE_SHARE = 0.7  # the others are known by their address only
LOCATION_COLUMNS = ["user_id", "device_cell", "device_at", "ip_cell", "ip_accuracy_km", "ip_at", "cell", "bucket",
                    "updated_at"]
CHUNK = 2_000


class Progress:
    """One line that redraws itself on a terminal, and a line per quarter anywhere else."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self._out, self._tty = out, out.isatty()
        self._last: tuple[str, int] | None = None

    def show(self, stage: str, done: int, total: int) -> None:
        share = min(1.0, done / total) if total else 1.0
        step = (stage, int(share * 30) if self._tty else int(share * 4))
        if step == self._last:
            return
        self._last = step
        if self._tty:
            end = "\n" if share >= 1 else ""
            self._out.write(f"\r  demo: {stage:<18} [{'#' * step[1]:<30}] {done}/{total}{end}")
        else:
            self._out.write(f"  demo: {stage} {done}/{total}\n")
        self._out.flush()


def addresses_by_city(path: str, rng: random.Random, wanted: set[int], lookups: int) -> dict[int, list[str]]:
    """Public IPv4 addresses the database places in each wanted city, at most 50 km off."""
    found: dict[int, list[str]] = {}
    with maxminddb.open_database(path) as reader:
        for _ in range(lookups):
            address = ipaddress.IPv4Address(rng.getrandbits(32))
            if not address.is_global:
                continue
            record: Any = reader.get(str(address))
            city = (record or {}).get("city", {}).get("geoname_id")
            accuracy = (record or {}).get("location", {}).get("accuracy_radius", 1000)
            if city in wanted and accuracy <= 50:
                found.setdefault(city, []).append(str(address))
    return found


@dataclass
class Placed:
    row: tuple[Any, ...]
    location: tuple[Any, ...]
    city: City
    ip: str


def _location(user_id: Any, lat: float, lon: float, ip_at: datetime, ip_fix: tuple[float, float, int],
              device: tuple[datetime, float] | None, now: datetime) -> tuple[Any, ...]:
    ip_lat, ip_lon, accuracy_km = ip_fix
    where = Whereabouts(user_id, ip_cell=snap(ip_lat, ip_lon, accuracy_km * 1000), ip_accuracy_km=accuracy_km,
                        ip_at=ip_at)
    if device is not None:  # device is (when, accuracy in metres)
        where = replace(where, device_cell=snap(lat, lon, device[1]), device_at=device[0])
    # The same choice the product makes on every update: a fresh device position, else the newer.
    current = where.current(now, timedelta(days=7))
    cell = current[0] if current else None
    return (user_id, where.device_cell, where.device_at, where.ip_cell, where.ip_accuracy_km, where.ip_at, cell,
            bucket_of(cell) if cell else None, now)


class _Placer:
    def __init__(self, rng: random.Random, people: People, index: dict[int, list[str]], geoip: MaxMindGeoIp,
                 now: datetime) -> None:
        self.rng, self.people, self.index, self.geoip, self.now = rng, people, index, geoip, now

    def place(self, city: City, row: tuple[Any, ...], *, device_share: float = DEVICE_SHARE,
              at: tuple[float, float] | None = None, fresh: bool = False) -> Placed | None:
        rng, now = self.rng, self.now
        ip = rng.choice(self.index[city.geoname_id])
        fix = self.geoip.locate(ip)  # what a log-in from that address would store
        if fix is None:
            return None
        lat, lon = at or around(rng, city)
        device = (now if fresh else now - timedelta(hours=rng.uniform(0, 144)), rng.uniform(5, 60)) \
            if rng.random() < device_share else None
        ip_at = now if fresh else now - timedelta(hours=rng.uniform(0, 48))
        return Placed(row, _location(row[0], lat, lon, ip_at, fix, device, now), city, ip)


def place_people(size: int, seed: int, geoip_path: Path, password_hash: str, now: datetime,
                 with_demo: bool) -> list[Placed]:
    rng = random.Random(seed)
    every = cities()
    metros = {c.name: c for c in sorted(every, key=lambda c: c.population) if c.name in METROS}
    lookups = min(LOOKUPS, max(100_000, 20 * size))  # a small population needs fewer cities found
    index = addresses_by_city(str(geoip_path), rng, {c.geoname_id for c in every}, lookups)
    covered = [c for c in every if c.geoname_id in index]
    weights = cumulative(c.population for c in covered)
    dense = [c for c in metros.values() if c.geoname_id in index]
    people = People(rng, now, password_hash, f"demo-{seed}-")
    geoip = MaxMindGeoIp(geoip_path)
    try:
        placer = _Placer(rng, people, index, geoip, now)
        placed: list[Placed] = []
        for i in range(size):
            in_metro = dense and i < size * DENSE_SHARE
            city = rng.choice(dense) if in_metro else rng.choices(covered, cum_weights=weights)[0]
            one = placer.place(city, people.row(new_id()))
            if one is not None:
                placed.append(one)
        paris = metros.get("Paris")
        if with_demo and paris is not None and paris.geoname_id in index:
            placed += _demo_account(placer, paris)
    finally:
        geoip.close()
    return placed


def _demo_account(placer: _Placer, paris: City) -> list[Placed]:
    """The account the README names, in central Paris, open to everyone 20 to 45 within 25 km, and
    people around it who liked it already (they come last)."""
    rng, people = placer.rng, placer.people
    row = people.row(new_id(), gender=Gender.WOMAN, age=29, show_me=[g.value for g in Gender], ages=(20, 45),
                     max_km=25, active_now=True, visible=True, email=DEMO_EMAIL, name="Demo D.")
    out = [placer.place(paris, row, device_share=1.0, at=(paris.latitude, paris.longitude), fresh=True)]
    for _ in range(ADMIRERS):
        admirer = people.row(new_id(), age=rng.randint(24, 38), show_me=[Gender.WOMAN.value], ages=(22, 40),
                             max_km=25, active_now=True, visible=True)
        out.append(placer.place(paris, admirer, device_share=1.0, fresh=True))
    return [p for p in out if p is not None]


async def _copy(pool: asyncpg.Pool, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]],
                progress: Progress, stage: str, done: list[int], total: int) -> None:
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(table, columns=columns, records=chunk)
        done[0] += len(chunk)
        progress.show(stage, done[0], total)


async def load(settings: Settings, size: int = DEFAULT_SIZE, *, seed: int = 1, if_empty: bool = False,
               progress: Progress | None = None) -> int:
    """Adds size people (and the demo account, if missing); returns how many were added."""
    progress = progress or Progress()
    geoip_path = Path(settings.geoip_database) if settings.geoip_database else packaged_database()
    if geoip_path is None or not geoip_path.exists():
        log.warning("no GeoLite2 database at %s: no demo population", geoip_path)
        return 0
    async with open_pool(settings.database_url, max_size=2) as pool:
        if if_empty and await pool.fetchval("SELECT EXISTS (SELECT FROM users)"):
            return 0
        with_demo = not await pool.fetchval("SELECT EXISTS (SELECT FROM user_emails WHERE email = $1)", DEMO_EMAIL)
        hasher = Argon2Hasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        password_hash = await hasher.hash(DEMO_PASSWORD)
        now = datetime.now(UTC)
        progress.show("placing people", 0, size)
        started = time.monotonic()
        placed = await asyncio.to_thread(place_people, size, seed, geoip_path, password_hash, now, with_demo)
        progress.show("placing people", size, size)
        users = [p.row for p in placed]
        done = [0]
        await _copy(pool, "users", USER_COLUMNS, users, progress, "writing accounts", done, 2 * len(users))
        await _copy(pool, "user_emails", ["email", "user_id"], [(r[1], r[0]) for r in users], progress,
                    "writing accounts", done, 2 * len(users))
        done = [0]
        # Each row queues a discovery change through the table's trigger, as any position does.
        await _copy(pool, "user_locations", LOCATION_COLUMNS, [p.location for p in placed], progress,
                    "storing positions", done, len(placed))
        if with_demo:
            await _admire(pool, placed, now)
        await _fill_buckets(pool, settings, progress)
    log.info("demo population: %d people in %.1f s", len(placed), time.monotonic() - started)
    return len(placed)


async def _admire(pool: asyncpg.Pool, placed: list[Placed], now: datetime) -> None:
    demo = next(p for p in placed if p.row[1] == DEMO_EMAIL)
    admirers = [p.row[0] for p in placed[-ADMIRERS:]]
    await pool.executemany(
        "INSERT INTO swipes (user_id, target_id, direction, super_like, created_at) VALUES ($1, $2, 'LIKE', $3, $4)",
        [(a, demo.row[0], i < 3, now) for i, a in enumerate(admirers)])
    # The first three super-liked: they come first among the demo account's candidates.
    await pool.executemany(
        "INSERT INTO super_likes_received (user_id, sender_id, created_at) VALUES ($1, $2, $3)",
        [(demo.row[0], a, now) for a in admirers[:3]])


async def _fill_buckets(pool: asyncpg.Pool, settings: Settings, progress: Progress) -> None:
    # The updater's own code; a location-updater worker running meanwhile shares the work safely.
    total = await pool.fetchval("SELECT count(*) FROM discovery_changes")
    redis = open_redis(settings.redis_url)
    try:
        updater = LocationUpdater(pool, redis, settings.redis_prefix)
        await updater.sweep()
        while True:
            applied = await updater.apply_batch()
            left = await pool.fetchval("SELECT count(*) FROM discovery_changes")
            progress.show("filling discovery", max(0, total - left), max(total, 1))
            if not applied and not left:
                break
            if not applied:
                await asyncio.sleep(0.2)  # another updater holds the rest
    finally:
        await redis.aclose()
