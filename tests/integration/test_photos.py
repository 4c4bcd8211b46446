import asyncio
import io
import json
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image

from domain import accounts, locations, photos
from domain.errors import Code, DomainError
from domain.events import PhotoChanged, UserEvent
from domain.photos import MAX_PHOTOS, Photo, PhotoDeps, PhotoState, Rejection, public_key, upload_key
from infra.app import Runtime
from infra.pg_photos import PgPhotos, finish, take_jobs
from infra.photo_store import S3Photos, photo_store, s3_client
from infra.settings import Settings
from resolvers.context import Context, Loaders, Ports
from schema import build_schema
from tests.factories import PASSWORD, make_users
from tests.photo_files import (
    TEXT_AS_JPEG,
    metadata_left,
    phone_heic,
    phone_jpeg,
    png,
    png_claiming,
    srgb_icc,
    truncated_jpeg,
)
from workers.location_updater import LocationUpdater
from workers.photos import PhotoWorker


class Recorded:
    def __init__(self) -> None:
        self.sent: list[UserEvent] = []

    async def publish(self, event: UserEvent) -> None:
        self.sent.append(event)


@pytest.fixture
def pool(runtime: Runtime) -> asyncpg.Pool:
    assert runtime.pool is not None
    return runtime.pool


@pytest.fixture
def ports(runtime: Runtime) -> Ports:
    return runtime.require_ports()


@pytest.fixture
def store(settings: Settings) -> S3Photos:
    return photo_store(settings)


@pytest.fixture
def s3(settings: Settings) -> Any:
    return s3_client(settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)


def keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for item in listed.get("Contents", [])}


async def drain(pool: asyncpg.Pool, store: S3Photos, events: Recorded | None = None) -> None:
    await PhotoWorker(pool, store, events or Recorded()).run(asyncio.Event(), until_idle=True)


async def upload(ports: Ports, user_id: uuid.UUID, data: bytes, content_type: str = "image/jpeg",
                 announced: int | None = None) -> tuple[uuid.UUID, httpx.Response]:
    ticket = await photos.request_upload(ports.photos, user_id, content_type, announced or len(data),
                                         datetime.now(UTC))
    async with httpx.AsyncClient() as client:
        sent = await client.put(ticket.url, content=data, headers=dict(ticket.headers))
    return ticket.upload_id, sent


async def test_the_presigned_upload_takes_only_what_it_was_signed_for(store: S3Photos, settings: Settings,
                                                                      s3: Any) -> None:
    data = phone_jpeg()
    key = upload_key(uuid.uuid4(), uuid.uuid4())
    url, headers = await store.presign_upload(key, "image/jpeg", len(data), timedelta(minutes=5))
    async with httpx.AsyncClient() as client:
        other_type = await client.put(url, content=data, headers={**dict(headers), "Content-Type": "image/png"})
        larger = await client.put(url, content=data + b"more", headers={"Content-Type": "image/jpeg"})
        assert other_type.status_code == 403 and larger.status_code == 403
        assert key not in keys(s3, settings.s3_bucket, "uploads/")
        await asyncio.sleep(2)  # a valid signature is not a short-lived one
        sent = await client.put(url, content=data, headers=dict(headers))
        assert sent.status_code == 200, sent.text
        assert s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read() == data
        anonymous = await client.get(f"{settings.s3_endpoint_url}/{settings.s3_bucket}/{key}")
        assert anonymous.status_code >= 400 and data not in anonymous.content
        # Nor can anyone list the bucket for the keys (or the public tokens) it holds.
        listing = await client.get(f"{settings.s3_endpoint_url}/{settings.s3_bucket}?list-type=2")
        assert listing.status_code >= 400 and key not in listing.text
        short_url, short_headers = await store.presign_upload(upload_key(uuid.uuid4(), uuid.uuid4()), "image/jpeg",
                                                              len(data), timedelta(seconds=1))
        await asyncio.sleep(2.5)
        expired = await client.put(short_url, content=data, headers=dict(short_headers))
        assert expired.status_code in (400, 403), expired.text
        # The signature names its key: it opens no other one.
        other_key = upload_key(uuid.uuid4(), uuid.uuid4())
        elsewhere = await client.put(url.replace(key, other_key), content=data, headers=dict(headers))
        assert elsewhere.status_code == 403
        assert not {short_url.split("?")[0].split(f"/{settings.s3_bucket}/")[1], other_key} & keys(
            s3, settings.s3_bucket, "uploads/")


@pytest.mark.parametrize(("make", "content_type"), [(phone_jpeg, "image/jpeg"), (phone_heic, "image/heic")],
                         ids=["jpeg", "heic"])
async def test_a_phone_photo_is_stored_upright_without_exif_and_with_its_profile(
        pool: asyncpg.Pool, ports: Ports, store: S3Photos, settings: Settings, s3: Any,
        make: Callable[[int, int], bytes], content_type: str) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    photo_id, sent = await upload(ports, user_id, make(2000, 1500), content_type)
    assert sent.status_code == 200
    confirmed = await photos.confirm_upload(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    assert confirmed.state is PhotoState.PROCESSING
    events = Recorded()
    await drain(pool, store, events)
    ready = await ports.photos.photos.get(user_id, photo_id)
    assert ready is not None and ready.state is PhotoState.READY, ready
    assert [(s.width, s.height) for _, s in ready.renditions] == [(1080, 1440), (320, 427)]
    assert events.sent == [PhotoChanged(user_id, photo_id)]
    for key, size in ready.renditions:
        stored = s3.get_object(Bucket=settings.s3_bucket, Key=key)
        assert stored["ContentType"] == "image/jpeg"
        body = stored["Body"].read()
        assert metadata_left(body) == set()
        image = Image.open(io.BytesIO(body))
        assert image.size == (size.width, size.height)
        assert dict(image.getexif()) == {} and not {"exif", "xmp", "comment"} & set(image.info)
        assert image.info["icc_profile"] == srgb_icc()
        assert image.getpixel((image.width // 2, 5))[0] > 150  # type: ignore[index]  # red on top: turned
        assert image.getpixel((image.width // 2, image.height - 5))[2] > 150  # type: ignore[index]  # blue below
    assert upload_key(user_id, photo_id) not in keys(s3, settings.s3_bucket, "uploads/")


@pytest.mark.parametrize(("data", "announced", "reason"), [
    (png(1, 1), None, Rejection.TOO_SMALL),
    (png_claiming(30_000, 30_000), None, Rejection.TOO_MANY_PIXELS),
    (TEXT_AS_JPEG, None, Rejection.NOT_AN_IMAGE),
    (truncated_jpeg(), None, Rejection.DAMAGED),
    (None, 5000, Rejection.NOT_UPLOADED),
], ids=["1x1 png", "30000x30000 png", "text named jpg", "truncated jpeg", "never uploaded"])
async def test_a_refused_file_leaves_nothing_public(pool: asyncpg.Pool, ports: Ports, store: S3Photos,
                                                   settings: Settings, s3: Any, data: bytes | None,
                                                   announced: int | None, reason: Rejection) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    public_before = keys(s3, settings.s3_bucket, "photos/")
    if data is None:
        ticket = await photos.request_upload(ports.photos, user_id, "image/jpeg", announced or 1, datetime.now(UTC))
        photo_id = ticket.upload_id
    else:
        photo_id, sent = await upload(ports, user_id, data, "image/png" if data.startswith(b"\x89PNG") else
                                      "image/jpeg")
        assert sent.status_code == 200
    await photos.confirm_upload(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    await drain(pool, store)
    rejected = await ports.photos.photos.get(user_id, photo_id)
    assert rejected is not None and (rejected.state, rejected.rejection) == (PhotoState.REJECTED, reason)
    assert rejected.renditions == ()
    assert keys(s3, settings.s3_bucket, "photos/") == public_before
    assert keys(s3, settings.s3_bucket, f"uploads/{user_id}/") == set()


async def test_an_object_larger_than_announced_is_refused(pool: asyncpg.Pool, ports: Ports, store: S3Photos,
                                                          settings: Settings, s3: Any) -> None:
    # The store already refuses a larger body on the signed URL; a store that did not would still
    # be caught here.
    [(user_id, _)] = await make_users(pool, 1)
    data = phone_jpeg()
    ticket = await photos.request_upload(ports.photos, user_id, "image/jpeg", len(data) - 10, datetime.now(UTC))
    s3.put_object(Bucket=settings.s3_bucket, Key=upload_key(user_id, ticket.upload_id), Body=data)
    await photos.confirm_upload(ports.photos, user_id, str(ticket.upload_id), datetime.now(UTC))
    await drain(pool, store)
    rejected = await ports.photos.photos.get(user_id, ticket.upload_id)
    assert rejected is not None and rejected.rejection is Rejection.FILE_TOO_LARGE
    assert keys(s3, settings.s3_bucket, f"uploads/{user_id}/") == set()


async def ready_photo(pool: asyncpg.Pool, ports: Ports, store: S3Photos, user_id: uuid.UUID) -> Photo:
    photo_id, _ = await upload(ports, user_id, phone_jpeg(800, 600))
    await photos.confirm_upload(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    await drain(pool, store)
    photo = await ports.photos.photos.get(user_id, photo_id)
    assert photo is not None and photo.state is PhotoState.READY
    return photo


async def test_deleted_photos_and_accounts_take_their_objects_along(pool: asyncpg.Pool, ports: Ports,
                                                                    store: S3Photos, settings: Settings,
                                                                    s3: Any) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    first, second, third = [await ready_photo(pool, ports, store, user_id) for _ in range(3)]
    public = keys(s3, settings.s3_bucket, "photos/")
    assert {key for p in (first, second, third) for key, _ in p.renditions} <= public
    await photos.delete_photo(ports.photos, user_id, str(first.id), datetime.now(UTC))
    await drain(pool, store)
    left = keys(s3, settings.s3_bucket, "photos/")
    assert not {key for key, _ in first.renditions} & left
    assert {key for p in (second, third) for key, _ in p.renditions} <= left
    # The account's deletion alone (as if the process died before deleting its photos) suffices.
    await ports.users.delete(user_id, datetime.now(UTC))
    assert await ports.photos.photos.own(user_id) == []
    assert await ports.photos.photos.visible(uuid.uuid4(), [user_id]) == {}
    await drain(pool, store)
    assert not {key for p in (second, third) for key, _ in p.renditions} & keys(s3, settings.s3_bucket, "photos/")
    assert await ports.photos.photos.own(user_id) == []


async def test_a_photo_deleted_while_processing_leaves_no_object(pool: asyncpg.Pool, ports: Ports,
                                                                 store: S3Photos, settings: Settings,
                                                                 s3: Any) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    photo_id, _ = await upload(ports, user_id, phone_jpeg(800, 600))
    await photos.confirm_upload(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    [job] = [j for j in await take_jobs(pool, 100, timedelta(minutes=2), datetime.now(UTC)) if j.photo_id == photo_id]
    written = public_key(job.token, 1080)
    s3.put_object(Bucket=settings.s3_bucket, Key=written, Body=b"as if rendered")
    await photos.delete_photo(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    assert not await finish(pool, job, None, [], datetime.now(UTC))
    await drain(pool, store)
    assert written not in keys(s3, settings.s3_bucket, "photos/")


async def test_a_crashed_workers_photo_is_taken_again_and_its_late_answer_ignored(
        pool: asyncpg.Pool, ports: Ports, store: S3Photos) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    photo_id, _ = await upload(ports, user_id, phone_jpeg(800, 600))
    await photos.confirm_upload(ports.photos, user_id, str(photo_id), datetime.now(UTC))
    # Taken three minutes ago with a two-minute lease, and never finished: that worker died.
    long_ago = datetime.now(UTC) - timedelta(minutes=3)
    [stale] = [j for j in await take_jobs(pool, 100, timedelta(minutes=2), long_ago) if j.photo_id == photo_id]
    await drain(pool, store)
    photo = await ports.photos.photos.get(user_id, photo_id)
    assert photo is not None and photo.state is PhotoState.READY
    assert not await finish(pool, stale, Rejection.DAMAGED, [], datetime.now(UTC))
    again = await ports.photos.photos.get(user_id, photo_id)
    assert again is not None and again.state is PhotoState.READY


class CountingPhotos:
    def __init__(self, inner: PgPhotos) -> None:
        self.inner = inner
        self.calls = 0

    async def visible(self, viewer_id: uuid.UUID, owner_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Photo]]:
        self.calls += 1
        return await self.inner.visible(viewer_id, owner_ids)


async def test_photos_of_many_people_load_in_one_query_and_never_across_a_block(
        pool: asyncpg.Pool, ports: Ports, store: S3Photos) -> None:
    people = [u for u, _ in await make_users(pool, 4)]
    viewer, owners = people[0], people[1:]
    for owner in owners:
        await ready_photo(pool, ports, store, owner)
    await ports.swipes.relations.block(owners[0], viewer, datetime.now(UTC))
    counting = CountingPhotos(PgPhotos(pool))
    loaders = Loaders(replace(ports, photos=PhotoDeps(counting, ports.photos.storage,  # type: ignore[arg-type]
                                                      ports.photos.quotas, ports.photos.events)))
    found = await asyncio.gather(*(loaders.photos.load((viewer, owner)) for owner in owners))
    assert counting.calls == 1
    assert [len(f) for f in found] == [0, 1, 1]
    # Either side of a block: the blocker does not see the blocked person's photos either.
    assert set(await PgPhotos(pool).visible(owners[0], [viewer, owners[1]])) == {owners[1]}


async def test_a_reorder_sticks_and_a_stale_one_is_refused(pool: asyncpg.Pool, ports: Ports, store: S3Photos) -> None:
    [(user_id, _)] = await make_users(pool, 1)
    ids = [(await ready_photo(pool, ports, store, user_id)).id for _ in range(3)]
    wanted = [ids[2], ids[0], ids[1]]
    done = await photos.reorder(ports.photos, user_id, [str(i) for i in wanted], datetime.now(UTC))
    assert [p.id for p in done] == wanted == [p.id for p in await ports.photos.photos.own(user_id)]
    assert not await ports.photos.photos.reorder(user_id, wanted[:2], datetime.now(UTC))


async def test_six_photos_at_most_even_when_asked_for_all_at_once(pool: asyncpg.Pool, ports: Ports) -> None:
    [(user_id, _)] = await make_users(pool, 1)

    async def ask() -> str:
        try:
            await photos.request_upload(ports.photos, user_id, "image/jpeg", 5000, datetime.now(UTC))
        except DomainError as refused:
            return refused.code.value
        return "granted"

    answers = await asyncio.gather(*(ask() for _ in range(MAX_PHOTOS + 3)))
    assert sorted(answers) == sorted(["granted"] * MAX_PHOTOS + [Code.TOO_MANY_PHOTOS.value] * 3)


async def ready_rows(pool: asyncpg.Pool, owners: list[uuid.UUID]) -> None:
    """Two READY photos each, straight into PostgreSQL: what is counted here is reads."""
    now = datetime.now(UTC)
    rows = []
    for owner in owners:
        for position in (1, 2):
            token = secrets.token_urlsafe(18)
            rendition = json.dumps([[public_key(token, 1080), 1080, 810]])
            rows.append((owner, uuid.uuid4(), position, token, rendition, now))
    await pool.executemany(
        "INSERT INTO photos (user_id, id, state, position, content_type, byte_size, token, renditions, created_at,"
        " updated_at, upload_expires_at) VALUES ($1, $2, 'READY', $3, 'image/jpeg', 1000, $4, $5::jsonb, $6, $6, $6)",
        rows)


async def test_a_page_of_candidates_reads_photos_in_one_query_whatever_its_size(
        runtime: Runtime, pool: asyncpg.Pool, ports: Ports, settings: Settings) -> None:
    # Somewhere no other test places anyone.
    lat, lon = random.uniform(-40, 40), random.uniform(-170, 170)
    people = await make_users(pool, 31)
    (viewer, viewer_email), others = people[0], [u for u, _ in people[1:]]
    for user in (viewer, *others):
        await locations.update_from_device(ports.places, user, lat, lon, 10, datetime.now(UTC))
    await ready_rows(pool, others)
    assert runtime.redis is not None
    await LocationUpdater(pool, runtime.redis, settings.redis_prefix).run(asyncio.Event(), until_idle=True)
    statements: list[str] = []

    async def count(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda logged: statements.append(logged.query))

    _, tokens = await accounts.log_in(ports.auth, viewer_email, PASSWORD, datetime.now(UTC))
    schema = build_schema()
    async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=4, init=count) as counted:
        seen = replace(ports, photos=replace(ports.photos, photos=PgPhotos(counted)))
        cards: list[str] = []
        after = None
        for first in (3, 25):
            statements.clear()
            page = await schema.execute(
                "query($first: Int!, $after: String) { nearbyCandidates(first: $first, after: $after) {"
                " edges { node { person { id photos { url } } } } pageInfo { endCursor } } }",
                {"first": first, "after": after}, context_value=Context(seen, "127.0.0.1", "req", tokens.access_token))
            assert page.errors is None and page.data is not None, page.errors
            found = page.data["nearbyCandidates"]
            ours = [e["node"]["person"] for e in found["edges"] if uuid.UUID(e["node"]["person"]["id"]) in others]
            assert len(ours) == first and all(len(p["photos"]) == 2 for p in ours)
            # Only the pool's own bookkeeping besides (type introspection, resets).
            assert len([q for q in statements if "photos" in q]) == 1, statements
            cards += [p["id"] for p in ours]
            after = found["pageInfo"]["endCursor"]
    assert len(set(cards)) == 28
