import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import websockets
from PIL import Image

from infra.devstack import free_port
from infra.photo_store import s3_client
from infra.settings import Settings
from tests.conftest import settings_env
from tests.e2e.conftest import Account, gql, running_server, sign_up, ws_url
from tests.e2e.test_make_run import dev_stack
from tests.photo_files import TEXT_AS_JPEG, metadata_left, phone_jpeg, png, png_claiming, srgb_icc, truncated_jpeg

T = TypeVar("T")
PHOTO = "id state rejection url sizes { width height url }"
REQUEST = """mutation($type: String!, $size: Int!) { requestPhotoUpload(contentType: $type, byteSize: $size) {
  __typename ... on PhotoUpload { uploadId url method headers { name value } expiresAt }
  ... on Error { code message } ... on InputError { field } } }"""
CONFIRM = ("mutation($id: ID!) { confirmPhotoUpload(uploadId: $id) { __typename ... on Photo { " + PHOTO
           + " } ... on Error { code } } }")
MY_PHOTOS = "{ me { photos { " + PHOTO + " } } }"
PERSON = "query($id: ID!) { person(id: $id) { id photos { url sizes { url } } } }"
NEARBY = "{ nearbyCandidates(first: 100) { edges { node { person { id photos { url sizes { url } } } } } } }"
LOCATE = "mutation($lat: Float!, $lon: Float!) { updateLocation(latitude: $lat, longitude: $lon," \
         " accuracyMeters: 10) { __typename } }"
LIKE = "mutation($id: ID!) { like(userId: $id) { __typename ... on Swipe { person { photos { url } } } } }"


class Worker:
    """A `newfriends worker NAME` process that a test may kill and start again."""

    def __init__(self, name: str, settings: Settings, log: Path, **env: str) -> None:
        self._cmd = [sys.executable, "-m", "infra.cli", "worker", name]
        self._env = {**os.environ, **settings_env(settings), **env}
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self._log, "ab") as out:
            self._proc = subprocess.Popen(self._cmd, env=self._env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        assert self._proc is not None
        self._proc.terminate()
        assert self._proc.wait(20) == 0, self._log.read_text()[-3000:]


@pytest.fixture(scope="module")
def photo_worker(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = Worker("photos", settings, tmp_path_factory.mktemp("photos") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def updater(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    worker = Worker("location-updater", settings, tmp_path_factory.mktemp("photos") / "updater.log")
    worker.start()
    yield
    worker.stop()


@pytest.fixture
def s3(settings: Settings) -> Any:
    return s3_client(settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)


def keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


async def eventually(probe: Callable[[], Awaitable[T | None]], seconds: float = 30, every: float = 0.1) -> T:
    async with asyncio.timeout(seconds):
        while True:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(every)


async def upload(api: str, who: Account, data: bytes, content_type: str = "image/jpeg",
                 announced: int | None = None) -> tuple[str, int]:
    """Asks for an upload, sends the file as any HTTP client would; the upload id and the store's status."""
    ticket, status = await upload_ticket(api, who, data, content_type, announced)
    return ticket["uploadId"], status


async def upload_ticket(api: str, who: Account, data: bytes, content_type: str = "image/jpeg",
                        announced: int | None = None) -> tuple[dict[str, Any], int]:
    ticket = (await gql(api, REQUEST, {"type": content_type, "size": announced or len(data)},
                        who.access_token))["data"]["requestPhotoUpload"]
    assert ticket["__typename"] == "PhotoUpload" and ticket["method"] == "PUT", ticket
    # Content-Length is left to the client, which counts what it sends: a file larger than announced
    # goes out with its true length, as from any client.
    headers = {h["name"]: h["value"] for h in ticket["headers"] if h["name"].lower() != "content-length"}
    async with httpx.AsyncClient() as client:
        sent = await client.put(ticket["url"], content=data, headers=headers)
    return ticket, sent.status_code


async def confirm(api: str, who: Account, upload_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(api, CONFIRM, {"id": upload_id}, who.access_token))["data"][
        "confirmPhotoUpload"]
    return result


async def my_photos(api: str, who: Account) -> list[dict[str, Any]]:
    body = await gql(api, MY_PHOTOS, token=who.access_token)
    assert "errors" not in body, body
    found: list[dict[str, Any]] = body["data"]["me"]["photos"]
    return found


async def settled(api: str, who: Account, photo_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        mine = {p["id"]: p for p in await my_photos(api, who)}
        return mine[photo_id] if mine[photo_id]["state"] != "PROCESSING" else None

    return await eventually(probe)


@asynccontextmanager
async def photo_events(api: str, who: Account) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with websockets.connect(ws_url(api), subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {who.access_token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {
            "query": "subscription { myEvents { __typename ... on PhotoChanged { photo { " + PHOTO + " } } } }"}}))
        await asyncio.sleep(0.3)  # the protocol has no "subscribed" message

        async def pump() -> None:
            async for frame in ws:
                message = json.loads(frame)
                if message["type"] == "next":
                    await queue.put(message["payload"]["data"]["myEvents"])

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()


async def next_verdict(events: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    """The first PhotoChanged past PROCESSING: the worker's verdict, as the owner hears it."""
    async with asyncio.timeout(30):
        while (changed := await events.get())["photo"]["state"] == "PROCESSING":
            pass
    assert changed["__typename"] == "PhotoChanged", changed
    photo: dict[str, Any] = changed["photo"]
    return photo


def stored_bytes(s3: Any, settings: Settings, url: str) -> bytes:
    base = f"{settings.s3_endpoint_url}/{settings.s3_bucket}/"
    assert url.startswith(base + "photos/"), url
    data: bytes = s3.get_object(Bucket=settings.s3_bucket, Key=url[len(base):])["Body"].read()
    return data


def read_back(s3: Any, settings: Settings, url: str) -> Image.Image:
    image = Image.open(io.BytesIO(stored_bytes(s3, settings, url)))
    image.load()
    return image


async def test_a_phone_photo_reaches_profile_and_cards_stripped_and_upright(
        api: str, settings: Settings, s3: Any, photo_worker: Worker, updater: None) -> None:
    ann, bob = await sign_up(api, displayName="Ann"), await sign_up(api, displayName="Bob")
    upload_id, status = await upload(api, ann, phone_jpeg(2000, 1500))
    assert status == 200
    async with photo_events(api, ann) as events:
        confirmed = await confirm(api, ann, upload_id)
        assert (confirmed["__typename"], confirmed["state"]) == ("Photo", "PROCESSING")
        photo = await next_verdict(events)
    assert (photo["id"], photo["state"], photo["rejection"]) == (upload_id, "READY", None)
    assert [(s["width"], s["height"]) for s in photo["sizes"]] == [(1080, 1440), (320, 427)]
    assert photo["url"] == photo["sizes"][0]["url"]
    for size in photo["sizes"]:
        assert metadata_left(stored_bytes(s3, settings, size["url"])) == set()
        image = read_back(s3, settings, size["url"])
        assert dict(image.getexif()) == {} and not {"exif", "xmp", "comment"} & set(image.info)
        assert image.info["icc_profile"] == srgb_icc()
        assert image.size == (size["width"], size["height"])
        assert image.getpixel((image.width // 2, 5))[0] > 150  # type: ignore[index]  # red on top: turned
        assert image.getpixel((image.width // 2, image.height - 5))[2] > 150  # type: ignore[index]  # blue below
    assert keys(s3, settings.s3_bucket, f"uploads/{ann.id}/") == set()  # the upload is gone

    seen = (await gql(api, PERSON, {"id": ann.id}, bob.access_token))["data"]["person"]
    assert seen["photos"] == [{"url": photo["url"], "sizes": [{"url": s["url"]} for s in photo["sizes"]]}]
    lat, lon = random.uniform(-30, 30), random.uniform(-150, 150)
    for who in (ann, bob):
        assert (await gql(api, LOCATE, {"lat": lat, "lon": lon}, who.access_token))["data"]["updateLocation"][
            "__typename"] == "MyLocation"

    async def card() -> dict[str, Any] | None:
        edges = (await gql(api, NEARBY, token=bob.access_token))["data"]["nearbyCandidates"]["edges"]
        return next((e["node"]["person"] for e in edges if e["node"]["person"]["id"] == ann.id), None)

    assert (await eventually(card))["photos"][0]["url"] == photo["url"]
    # A swipe answers with the person swiped, photos included; so does taking it back.
    liked = await gql(api, LIKE, {"id": ann.id}, bob.access_token)
    assert liked["data"]["like"]["person"]["photos"][0]["url"] == photo["url"], liked

    # Once Ann blocks Bob, nothing Bob can ask carries her photos.
    assert (await gql(api, "mutation($id: ID!) { block(userId: $id) { __typename } }", {"id": bob.id},
                      ann.access_token))["data"]["block"]["__typename"] == "Done"
    token = photo["url"].split("/")[-2]
    for query, variables in ((PERSON, {"id": ann.id}), (NEARBY, {}),
                             ("{ matches { edges { node { person { photos { url } } } } } }", {}),
                             ("mutation { undoLastSwipe { __typename ... on Swipe { person { photos { url } } } } }",
                              {}), (LIKE, {"id": ann.id})):
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{api}/graphql", json={"query": query, "variables": variables},
                                       headers={"authorization": f"Bearer {bob.access_token}"})
        assert token not in answer.text, answer.text


@pytest.mark.parametrize(("data", "content_type", "announced", "reason"), [
    (png(1, 1), "image/png", None, "TOO_SMALL"),
    (png_claiming(30_000, 30_000), "image/png", None, "TOO_MANY_PIXELS"),
    (TEXT_AS_JPEG, "image/jpeg", None, "NOT_AN_IMAGE"),
    (truncated_jpeg(), "image/jpeg", None, "DAMAGED"),
    # The store refuses the body (the signature covers its length), so nothing arrives to process.
    (phone_jpeg(), "image/jpeg", 1000, "NOT_UPLOADED"),
], ids=["1x1 png", "30000x30000 png", "text named jpg", "truncated jpeg", "larger than announced"])
async def test_a_bad_file_is_rejected_with_a_reason_and_nothing_is_left_public(
        api: str, settings: Settings, s3: Any, photo_worker: Worker, data: bytes, content_type: str,
        announced: int | None, reason: str) -> None:
    ann = await sign_up(api)
    public_before = keys(s3, settings.s3_bucket, "photos/")
    upload_id, status = await upload(api, ann, data, content_type, announced)
    assert status == (403 if announced else 200)
    async with photo_events(api, ann) as events:
        assert (await confirm(api, ann, upload_id))["state"] == "PROCESSING"
        heard = await next_verdict(events)
    rejected = await settled(api, ann, upload_id)
    assert rejected == heard
    assert (rejected["id"], rejected["state"], rejected["rejection"], rejected["url"], rejected["sizes"]) == (
        upload_id, "REJECTED", reason, None, [])
    assert keys(s3, settings.s3_bucket, "photos/") == public_before

    async def uploads_gone() -> bool | None:
        return True if not keys(s3, settings.s3_bucket, f"uploads/{ann.id}/") else None

    await eventually(uploads_gone)


async def test_a_confirmed_photo_survives_a_worker_crash(api: str, photo_worker: Worker) -> None:
    ann = await sign_up(api)
    photo_worker.kill()
    try:
        upload_id, _ = await upload(api, ann, phone_jpeg(800, 600))
        assert (await confirm(api, ann, upload_id))["state"] == "PROCESSING"
        await asyncio.sleep(1)
        assert (await my_photos(api, ann))[0]["state"] == "PROCESSING"
    finally:
        photo_worker.start()
    assert (await settled(api, ann, upload_id))["state"] == "READY"


async def test_a_worker_killed_in_the_middle_of_a_photo_loses_nothing(
        api: str, settings: Settings, photo_worker: Worker, tmp_path: Path) -> None:
    ann = await sign_up(api)
    # 49 megapixels to decode, turn and shrink: the worker is still at it when it is killed.
    upload_id, status = await upload(api, ann, phone_jpeg(7000, 7000))
    assert status == 200
    photo_id = uuid.UUID(upload_id)
    photo_worker.kill()
    quick = Worker("photos", settings, tmp_path / "worker.log", PHOTO_LEASE_SECONDS="3")
    conn = await asyncpg.connect(settings.database_url)
    try:
        quick.start()
        assert (await confirm(api, ann, upload_id))["state"] == "PROCESSING"

        async def attempts() -> int | None:
            found: int | None = await conn.fetchval(
                "SELECT attempts FROM photos WHERE user_id = $1 AND id = $2 AND lease_until IS NOT NULL",
                uuid.UUID(ann.id), photo_id)
            return found

        assert await eventually(attempts, every=0.01) == 1  # taken
        quick.kill()
        mine = await my_photos(api, ann)
        assert [(p["id"], p["state"], p["sizes"]) for p in mine] == [(upload_id, "PROCESSING", [])]
        quick.start()  # takes it again once the dead one's lease runs out
        ready = await settled(api, ann, upload_id)
        assert (ready["state"], len(ready["sizes"])) == ("READY", 2)
        assert await attempts() is None and await conn.fetchval(
            "SELECT attempts FROM photos WHERE id = $1", photo_id) == 2
    finally:
        await conn.close()
        if quick.running():
            quick.stop()
        photo_worker.start()


async def test_uploads_are_limited_per_hour_and_confirming_costs_none(
        api: str, settings: Settings, migrated: None, tmp_path: Path) -> None:
    ann = await sign_up(api)
    address = f"198.51.{random.randrange(256)}.{random.randrange(1, 255)}"
    headers = {"authorization": f"Bearer {ann.access_token}", "x-forwarded-for": address}
    asked = {"query": REQUEST.replace("... on Error", "... on LimitError { retryAfterSeconds } ... on Error"),
             "variables": {"type": "image/jpeg", "size": 1000}}
    # A tenth of the gateway limits (3 uploads an hour per person), and 2 an hour by the photo rules.
    with running_server(settings, tmp_path, RATE_LIMIT_SCALE="0.1", PHOTO_UPLOADS_PER_HOUR="2",
                        TRUSTED_PROXIES="127.0.0.1") as limited:
        async with httpx.AsyncClient(timeout=30) as client:
            async def post(body: dict[str, Any]) -> dict[str, Any]:
                answer = await client.post(f"{limited}/graphql", json=body, headers=headers)
                assert answer.status_code == 200, answer.text
                found: dict[str, Any] = answer.json()
                return found

            for _ in range(2):
                ticket = (await post(asked))["data"]["requestPhotoUpload"]
                assert ticket["__typename"] == "PhotoUpload", ticket
                confirmed = await post({"query": CONFIRM, "variables": {"id": ticket["uploadId"]}})
                assert "errors" not in confirmed, confirmed  # confirming takes nothing from the upload limit
                assert confirmed["data"]["confirmPhotoUpload"]["__typename"] == "Photo", confirmed
            third = (await post(asked))["data"]["requestPhotoUpload"]
            assert (third["__typename"], third["code"]) == ("LimitError", "RATE_LIMITED")
            assert 1 <= third["retryAfterSeconds"] <= 3600
            fourth = await post(asked)
            assert fourth["data"] is None and fourth["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_make_run_serves_photo_urls_through_its_local_cdn(tmp_path: Path) -> None:
    with dev_stack(tmp_path / "state", free_port()) as base:
        ann = await sign_up(base)
        ticket, status = await upload_ticket(base, ann, phone_jpeg(800, 600))
        assert status == 200
        await confirm(base, ann, ticket["uploadId"])
        photo = await settled(base, ann, ticket["uploadId"])
        assert photo["state"] == "READY", photo
        store = urlsplit(ticket["url"])
        cdn = photo["url"].split("/photos/")[0]
        async with httpx.AsyncClient() as client:
            for size in photo["sizes"]:
                assert not size["url"].startswith(f"{store.scheme}://{store.netloc}")  # not the store itself
                served = await client.get(size["url"])
                assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
                assert Image.open(io.BytesIO(served.content)).size == (size["width"], size["height"])
                assert metadata_left(served.content) == set()
            # A pending upload opens neither from the store without a signature nor through the CDN.
            data = phone_jpeg(800, 600)
            pending, status = await upload_ticket(base, ann, data)
            assert status == 200
            where = urlsplit(pending["url"])
            anonymous = await client.get(f"{where.scheme}://{where.netloc}{where.path}")
            # (rclone answers an unsigned request 400 UnsupportedAlgorithm: it serves none.)
            assert anonymous.status_code in (400, 401, 403) and "<Error>" in anonymous.text, anonymous.text
            assert data not in anonymous.content
            key = where.path.split("/", 2)[2]  # /<bucket>/uploads/...
            assert key.startswith("uploads/")
            assert (await client.get(f"{cdn}/{key}")).status_code == 404


async def test_limits_and_mistakes_are_errors_with_stable_codes(api: str, photo_worker: Worker) -> None:
    ann = await sign_up(api)

    async def request(content_type: str, size: int) -> dict[str, Any]:
        result: dict[str, Any] = (await gql(api, REQUEST, {"type": content_type, "size": size},
                                            ann.access_token))["data"]["requestPhotoUpload"]
        return result

    assert (await request("image/gif", 1000))["code"] == "UNSUPPORTED_PHOTO_TYPE"
    assert (await request("image/svg+xml", 1000))["field"] == "contentType"
    for size, code in ((0, "INVALID_INPUT"), (20_000_001, "PHOTO_TOO_LARGE")):
        assert (await request("image/jpeg", size))["code"] == code
    for _ in range(6):
        assert (await request("image/jpeg", 1000))["__typename"] == "PhotoUpload"
    full = await request("image/png", 1000)
    assert (full["__typename"], full["code"]) == ("StateError", "TOO_MANY_PHOTOS")
    for bad in ("nope", str(uuid.uuid4())):
        assert (await confirm(api, ann, bad))["code"] == "NOT_FOUND"
    deleted = await gql(api, "mutation($id: ID!) { deletePhoto(photoId: $id) { __typename ... on Error { code } } }",
                        {"id": str(uuid.uuid4())}, ann.access_token)
    assert deleted["data"]["deletePhoto"]["code"] == "NOT_FOUND"
    reorder = await gql(api, "mutation($ids: [ID!]!) { reorderPhotos(photoIds: $ids) { __typename"
                             " ... on InputError { code field } } }", {"ids": ["x"]}, ann.access_token)
    assert reorder["data"]["reorderPhotos"] == {"__typename": "InputError", "code": "INVALID_INPUT",
                                                "field": "photoIds"}
    anonymous = await gql(api, REQUEST, {"type": "image/jpeg", "size": 1000})
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_reorder_delete_and_account_deletion_keep_storage_in_step(
        api: str, settings: Settings, s3: Any, photo_worker: Worker) -> None:
    ann = await sign_up(api)
    ids = []
    for _ in range(3):
        upload_id, _ = await upload(api, ann, phone_jpeg(800, 600))
        await confirm(api, ann, upload_id)
        assert (await settled(api, ann, upload_id))["state"] == "READY"
        ids.append(upload_id)
    wanted = [ids[2], ids[0], ids[1]]
    reordered = await gql(api, "mutation($ids: [ID!]!) { reorderPhotos(photoIds: $ids) { __typename"
                               " ... on PhotoList { photos { id } } } }", {"ids": wanted}, ann.access_token)
    assert [p["id"] for p in reordered["data"]["reorderPhotos"]["photos"]] == wanted
    assert [p["id"] for p in await my_photos(api, ann)] == wanted
    photos = {p["id"]: p for p in await my_photos(api, ann)}
    base = f"{settings.s3_endpoint_url}/{settings.s3_bucket}/"

    def stored(photo_id: str) -> set[str]:
        return {s["url"][len(base):] for s in photos[photo_id]["sizes"]}

    async def gone(which: set[str]) -> bool | None:
        return True if not which & keys(s3, settings.s3_bucket, "photos/") else None

    assert stored(ids[0]) <= keys(s3, settings.s3_bucket, "photos/")
    left = await gql(api, "mutation($id: ID!) { deletePhoto(photoId: $id) { ... on PhotoList { photos { id } } } }",
                     {"id": ids[0]}, ann.access_token)
    assert [p["id"] for p in left["data"]["deletePhoto"]["photos"]] == [ids[2], ids[1]]
    await eventually(lambda: gone(stored(ids[0])))
    assert stored(ids[1]) | stored(ids[2]) <= keys(s3, settings.s3_bucket, "photos/")
    deleted = await gql(api, "mutation($p: String!) { deleteAccount(password: $p) { __typename } }",
                        {"p": ann.password}, ann.access_token)
    assert deleted["data"]["deleteAccount"]["__typename"] == "Done"
    await eventually(lambda: gone(stored(ids[1]) | stored(ids[2])))


async def test_photo_urls_start_with_the_configured_cdn(api: str, settings: Settings, photo_worker: Worker,
                                                        tmp_path: Path) -> None:
    ann = await sign_up(api)
    upload_id, _ = await upload(api, ann, phone_jpeg(800, 600))
    await confirm(api, ann, upload_id)
    assert (await settled(api, ann, upload_id))["state"] == "READY"
    with running_server(settings, tmp_path, PHOTO_CDN_URL="https://cdn.example.test/nf") as behind_cdn:
        [photo] = await my_photos(behind_cdn, ann)
    assert photo["url"].startswith("https://cdn.example.test/nf/photos/")
    assert all(s["url"].startswith("https://cdn.example.test/nf/photos/") for s in photo["sizes"])
