"""The demo population, as `make run` loads it: `newfriends demo` into a database of its own, then
the README's demo account signs in through the API, meets people and matches one of its admirers."""
import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from domain.geo import Point, distance_km
from infra.db import migrate
from infra.demo import ADMIRERS, DEMO_EMAIL, DEMO_PASSWORD, METROS
from infra.geoip import MaxMindGeoIp, packaged_database
from infra.population import cities
from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import gql, running_server
from tests.e2e.writers import WriterProcess
from tests.services import _create_database, _drop_database, _with_database

SIZE = 300
LOG_IN = """mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) {
  __typename ... on AuthPayload { accessToken } ... on Error { code } } }"""
NEARBY = """{ nearbyCandidates(first: 50) { edges { node { person { id } whySeen: whyShown { superLikedYou } } } } }"""
LIKE = "mutation($id: ID!) { like(userId: $id) { __typename } }"
MATCHES = "{ matches(first: 5) { edges { node { person { id } } } } }"


@pytest.fixture
async def demo_settings(settings: Settings) -> AsyncIterator[Settings]:
    name = f"demo_{secrets.token_hex(4)}"
    admin = _with_database(settings.database_url, "postgres")
    await _create_database(admin, name)
    own = replace(settings, database_url=_with_database(settings.database_url, name),
                  redis_prefix=f"{settings.redis_prefix}demo{secrets.token_hex(2)}:")
    await migrate(own.database_url)
    try:
        yield own
    finally:
        await _drop_database(admin, name)


def demo_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "REDIS_PREFIX": settings.redis_prefix}
    return subprocess.run([sys.executable, "-m", "infra.cli", "demo", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


async def test_demo_people_live_at_real_places_and_the_demo_account_can_match(
        demo_settings: Settings, tmp_path: Path) -> None:
    loaded = demo_command(demo_settings, "--size", str(SIZE), "--if-empty")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "demo: filling discovery" in loaded.stderr and DEMO_EMAIL in loaded.stdout  # progress, then the account
    again = demo_command(demo_settings, "--size", str(SIZE), "--if-empty")
    assert again.returncode == 0 and "added" not in again.stdout  # never into a database with people

    conn = await asyncpg.connect(demo_settings.database_url)
    try:
        people = await conn.fetch("SELECT u.id, u.email, l.ip_cell, l.device_cell, l.bucket FROM users u"
                                  " JOIN user_locations l ON l.user_id = u.id")
        queued = await conn.fetchval("SELECT count(*) FROM discovery_changes")
        listed = await conn.fetchval("SELECT count(*) FROM discovery_listed")
    finally:
        await conn.close()
    assert SIZE * 0.97 <= len(people) - ADMIRERS - 1 <= SIZE
    assert all(p["ip_cell"] for p in people)  # everyone came with an address the database places
    devices = sum(1 for p in people if p["device_cell"])
    assert 0.5 * len(people) < devices < 0.9 * len(people)
    assert queued == 0 and listed > 0.8 * len(people)  # the updater listed them from their changes

    with running_server(demo_settings, tmp_path, DATABASE_URL=demo_settings.database_url,
                              REDIS_PREFIX=demo_settings.redis_prefix) as api:
        logged = (await gql(api, LOG_IN, {"e": DEMO_EMAIL, "p": DEMO_PASSWORD}))["data"]["logIn"]
        assert logged["__typename"] == "AuthPayload", logged
        token = logged["accessToken"]
        edges = (await gql(api, NEARBY, token=token))["data"]["nearbyCandidates"]["edges"]
        assert len(edges) >= 20
        # The three who super-liked come first.
        assert [e["node"]["whySeen"]["superLikedYou"] for e in edges[:4]] == [True, True, True, False]
        writer = WriterProcess(demo_settings, tmp_path / "writer.log", DATABASE_URL=demo_settings.database_url,
                               REDIS_PREFIX=demo_settings.redis_prefix)
        await writer.start()
        try:
            admirer = edges[0]["node"]["person"]["id"]
            assert (await gql(api, LIKE, {"id": admirer}, token))["data"]["like"]["__typename"] == "Swipe"
            for _ in range(100):
                matched = (await gql(api, MATCHES, token=token))["data"]["matches"]["edges"]
                if matched:
                    break
                await asyncio.sleep(0.2)
            assert [m["node"]["person"]["id"] for m in matched] == [admirer]
        finally:
            await writer.stop()


def test_addresses_resolve_near_the_city_they_were_picked_for() -> None:
    from datetime import UTC, datetime

    from infra.demo import place_people

    path = packaged_database()
    assert path is not None
    placed = place_people(2_000, 7, path, "not a hash", datetime.now(UTC), with_demo=True)
    geoip = MaxMindGeoIp(path)
    try:
        for person in placed:
            fix = geoip.locate(person.ip)
            assert fix is not None and fix[2] <= 50
            assert distance_km(Point(fix[0], fix[1]), Point(person.city.latitude, person.city.longitude)) < 60
    finally:
        geoip.close()
    in_metros = sum(1 for p in placed if p.city.name in METROS)
    assert 0.25 * len(placed) < in_metros < 0.5 * len(placed)  # a dense share, the rest spread out
    assert len({p.city.geoname_id for p in placed}) > 300  # real places all over, weighted by population
    assert {c.geoname_id for c in cities()} >= {p.city.geoname_id for p in placed}
