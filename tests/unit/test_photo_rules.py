import io
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from PIL import ExifTags, Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from domain import photos
from domain.errors import Code, DomainError, InputError, LimitReached, NotFound
from domain.events import PhotoChanged, ProfileChanged, UserEvent
from domain.photos import (
    MAX_PHOTOS,
    Photo,
    PhotoDeps,
    PhotoLimits,
    PhotoState,
    Rejection,
    Size,
    check_announced,
    check_decoded,
    output_sizes,
    reordered,
)
from domain.ratelimits import RULES, checks
from infra.images import process
from infra.photo_store import S3Photos, cdn_base_url
from tests.photo_files import (
    BLUE,
    GPS,
    RED,
    TEXT_AS_JPEG,
    halves,
    metadata_left,
    phone_heic,
    phone_jpeg,
    png,
    png_claiming,
    srgb_icc,
    truncated_jpeg,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class FakePhotos:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, tuple[Photo, datetime, bool]] = {}  # photo, upload expiry, confirmed

    async def create_upload(self, user_id: uuid.UUID, photo_id: uuid.UUID, content_type: str, byte_size: int,
                            expires_at: datetime, max_photos: int, now: datetime) -> bool:
        taken = sum(1 for p, exp, done in self.rows.values()
                    if p.user_id == user_id and ((done and p.state != PhotoState.REJECTED) or exp > now))
        if taken >= max_photos:
            return False
        self.rows[photo_id] = (Photo(photo_id, user_id, PhotoState.PROCESSING, 0, now), expires_at, False)
        return True

    async def confirm(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> tuple[Photo, bool] | None:
        row = self.rows.get(photo_id)
        if row is None or row[0].user_id != user_id or (not row[2] and row[1] <= now):
            return None
        self.rows[photo_id] = (replace(row[0], position=len(self.rows)), row[1], True)
        return self.rows[photo_id][0], not row[2]

    async def own(self, user_id: uuid.UUID) -> list[Photo]:
        return sorted((p for p, _, done in self.rows.values() if p.user_id == user_id and done),
                      key=lambda p: p.position)

    async def reorder(self, user_id: uuid.UUID, order: list[uuid.UUID], now: datetime) -> bool:
        for n, photo_id in enumerate(order):
            photo, exp, done = self.rows[photo_id]
            self.rows[photo_id] = (replace(photo, position=n), exp, done)
        return True

    async def delete(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> bool:
        row = self.rows.get(photo_id)
        if row is None or row[0].user_id != user_id or not row[2]:
            return False
        del self.rows[photo_id]
        return True


class FakeStorage:
    async def presign_upload(self, key: str, content_type: str, byte_size: int, ttl: timedelta
                             ) -> tuple[str, tuple[tuple[str, str], ...]]:
        return f"https://s3.test/{key}", (("Content-Type", content_type), ("Content-Length", str(byte_size)))

    def public_url(self, key: str) -> str:
        return f"https://cdn.test/{key}"


class FakeQuotas:
    def __init__(self, limit_reached: bool = False) -> None:
        self.taken: set[str] = set()
        self.limit_reached = limit_reached

    async def take(self, user_id: uuid.UUID, kind: str, limit: int, window: timedelta, now: datetime,
                   token: str) -> int:
        if self.limit_reached:
            return 60
        self.taken.add(token)
        return 0

    async def give_back(self, user_id: uuid.UUID, kind: str, token: str) -> None:
        self.taken.discard(token)


class Events:
    def __init__(self) -> None:
        self.sent: list[UserEvent] = []

    async def publish(self, event: UserEvent) -> None:
        self.sent.append(event)


def deps(quotas: FakeQuotas | None = None) -> tuple[PhotoDeps, FakePhotos, Events]:
    repo, events = FakePhotos(), Events()
    return PhotoDeps(repo, FakeStorage(), quotas or FakeQuotas(), events), repo, events  # type: ignore[arg-type]


def test_only_jpeg_png_and_webp_of_a_bounded_size_may_be_announced() -> None:
    limits = PhotoLimits()
    assert check_announced(" Image/JPEG", 1000, limits) == "image/jpeg"
    assert check_announced("image/heic", 1000, limits) == "image/heic"
    assert check_announced("image/webp", limits.max_bytes, limits) == "image/webp"
    for wrong in ("image/gif", "text/plain", "image/svg+xml", ""):
        with pytest.raises(InputError) as refused:
            check_announced(wrong, 1000, limits)
        assert (refused.value.code, refused.value.field) == (Code.UNSUPPORTED_PHOTO_TYPE, "contentType")
    for size, code in ((0, Code.INVALID_INPUT), (-1, Code.INVALID_INPUT), (limits.max_bytes + 1, Code.PHOTO_TOO_LARGE)):
        with pytest.raises(InputError) as refused:
            check_announced("image/png", size, limits)
        assert (refused.value.code, refused.value.field) == (code, "byteSize")


def test_dimensions_are_judged_from_the_header() -> None:
    assert check_decoded("JPEG", 1200, 1600) is None
    assert check_decoded("GIF", 1200, 1600) is Rejection.UNSUPPORTED_FORMAT
    assert check_decoded(None, 1200, 1600) is Rejection.UNSUPPORTED_FORMAT
    assert check_decoded("PNG", 1, 1) is Rejection.TOO_SMALL
    assert check_decoded("PNG", 199, 800) is Rejection.TOO_SMALL
    assert check_decoded("PNG", 30_000, 30_000) is Rejection.TOO_MANY_PIXELS
    assert check_decoded("PNG", 25_000, 300) is Rejection.TOO_MANY_PIXELS  # few pixels, but one side too long
    assert check_decoded("WEBP", 300, 1300) is Rejection.BAD_SHAPE


def test_sizes_are_never_enlarged_and_never_repeated() -> None:
    assert output_sizes(4000, 3000) == [(1080, Size(1080, 810)), (320, Size(320, 240))]
    assert output_sizes(800, 1000) == [(1080, Size(800, 1000)), (320, Size(320, 400))]
    assert output_sizes(300, 300) == [(1080, Size(300, 300))]


def test_a_new_order_names_each_photo_once() -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    assert reordered([a, b, c], [str(c), str(a), str(b)]) == [c, a, b]
    for wrong in ([str(a), str(b)], [str(a), str(b), str(c), str(c)], [str(a), str(b), "nope"],
                  [str(a), str(b), str(uuid.uuid4())]):
        with pytest.raises(InputError) as refused:
            reordered([a, b, c], wrong)
        assert refused.value.field == "photoIds"


async def test_a_profile_holds_at_most_six_photos_pending_uploads_included() -> None:
    quotas = FakeQuotas()
    d, _, _ = deps(quotas)
    user = uuid.uuid4()
    tickets = [await photos.request_upload(d, user, "image/jpeg", 5000, NOW) for _ in range(MAX_PHOTOS)]
    assert tickets[0].url.endswith(f"uploads/{user}/{tickets[0].upload_id}")
    assert ("Content-Length", "5000") in tickets[0].headers
    with pytest.raises(DomainError) as full:
        await photos.request_upload(d, user, "image/jpeg", 5000, NOW)
    assert full.value.code is Code.TOO_MANY_PHOTOS
    assert len(quotas.taken) == MAX_PHOTOS  # the refused request's quota was given back
    # Unconfirmed uploads stop counting once they expire.
    later = NOW + PhotoLimits().upload_ttl + timedelta(seconds=1)
    assert await photos.request_upload(d, user, "image/png", 5000, later)


async def test_uploads_are_rate_limited() -> None:
    d, _, _ = deps(FakeQuotas(limit_reached=True))
    with pytest.raises(LimitReached) as limited:
        await photos.request_upload(d, uuid.uuid4(), "image/jpeg", 5000, NOW)
    assert limited.value.code is Code.RATE_LIMITED and limited.value.retry_after_seconds == 60


async def test_confirming_announces_once_and_only_ones_own_unexpired_upload() -> None:
    d, _, events = deps()
    user, other = uuid.uuid4(), uuid.uuid4()
    ticket = await photos.request_upload(d, user, "image/jpeg", 5000, NOW)
    for who, raw in ((other, str(ticket.upload_id)), (user, "not-an-id"), (user, str(uuid.uuid4()))):
        with pytest.raises(NotFound):
            await photos.confirm_upload(d, who, raw, NOW)
    photo = await photos.confirm_upload(d, user, str(ticket.upload_id), NOW)
    again = await photos.confirm_upload(d, user, str(ticket.upload_id), NOW + timedelta(hours=1))
    assert photo.id == again.id == ticket.upload_id
    assert events.sent == [PhotoChanged(user, photo.id)]
    late = await photos.request_upload(d, user, "image/jpeg", 5000, NOW)
    with pytest.raises(NotFound):
        await photos.confirm_upload(d, user, str(late.upload_id), late.expires_at)


async def test_reorder_and_delete_tell_the_owners_other_devices() -> None:
    d, _, events = deps()
    user = uuid.uuid4()
    ids = []
    for _ in range(3):
        ticket = await photos.request_upload(d, user, "image/jpeg", 5000, NOW)
        ids.append((await photos.confirm_upload(d, user, str(ticket.upload_id), NOW)).id)
    events.sent.clear()
    order = await photos.reorder(d, user, [str(ids[2]), str(ids[0]), str(ids[1])], NOW)
    assert [p.id for p in order] == [ids[2], ids[0], ids[1]]
    await photos.delete_photo(d, user, str(ids[0]), NOW)
    with pytest.raises(NotFound):
        await photos.delete_photo(d, user, str(ids[0]), NOW)
    assert events.sent == [ProfileChanged(user), ProfileChanged(user)]


def _decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image


@pytest.mark.parametrize("original", [phone_jpeg(1600, 1200), phone_heic(1600, 1200)], ids=["jpeg", "heic"])
def test_a_phone_photo_comes_out_upright_with_its_profile_and_nothing_else(original: bytes) -> None:
    source = Image.open(io.BytesIO(original))
    assert source.getexif().get_ifd(0x8825)  # it does carry a position
    renditions = process(original)
    assert isinstance(renditions, list)
    assert [(r.target, r.size) for r in renditions] == [(1080, Size(1080, 1440)), (320, Size(320, 427))]
    for rendition in renditions:
        out = _decode(rendition.jpeg)
        assert out.format == "JPEG" and out.size == (rendition.size.width, rendition.size.height)
        assert dict(out.getexif()) == {} and "exif" not in out.info
        assert not {"xmp", "comment"} & set(out.info)
        assert b"Exif\0\0" not in rendition.jpeg and b"xmpmeta" not in rendition.jpeg
        assert b"PhoneMaker" not in rendition.jpeg and b"taken at home" not in rendition.jpeg
        assert metadata_left(rendition.jpeg) == set()
        assert out.info["icc_profile"] == srgb_icc()
        # Turned clockwise: what was on the left is now on top.
        top, bottom = out.getpixel((out.width // 2, 5)), out.getpixel((out.width // 2, out.height - 5))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert max(abs(a - b) for a, b in zip(top, RED, strict=True)) < 30
        assert max(abs(a - b) for a, b in zip(bottom, BLUE, strict=True)) < 30


def test_transparency_is_flattened_and_a_profile_of_another_colour_space_dropped() -> None:
    out = io.BytesIO()
    lab = bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes())
    Image.new("RGBA", (400, 400), (0, 0, 0, 0)).save(out, "PNG", icc_profile=lab)
    renditions = process(out.getvalue())
    assert isinstance(renditions, list)
    image = _decode(renditions[0].jpeg)
    assert image.mode == "RGB" and image.getpixel((10, 10)) == (255, 255, 255)
    assert "icc_profile" not in image.info


@pytest.mark.parametrize(("data", "reason"), [
    (png(1, 1), Rejection.TOO_SMALL),
    (png_claiming(30_000, 30_000), Rejection.TOO_MANY_PIXELS),
    (TEXT_AS_JPEG, Rejection.NOT_AN_IMAGE),
    (truncated_jpeg(), Rejection.DAMAGED),
    (b"", Rejection.NOT_AN_IMAGE),
], ids=["1x1 png", "30000x30000 png", "text named jpg", "truncated jpeg", "empty"])
def test_what_is_not_a_usable_photo_is_refused_with_a_reason(data: bytes, reason: Rejection) -> None:
    assert process(data) is reason


def test_other_formats_are_refused_even_when_they_decode() -> None:
    out = io.BytesIO()
    Image.new("RGB", (400, 400)).save(out, "GIF")
    assert process(out.getvalue()) is Rejection.UNSUPPORTED_FORMAT


def test_public_urls_start_with_the_configured_cdn() -> None:
    store = S3Photos(None, "nf", cdn_base_url("https://cdn.example/", "http://127.0.0.1:9000", "nf", "eu-west-1"))
    assert store.public_url("photos/t/1080.jpg") == "https://cdn.example/photos/t/1080.jpg"
    assert cdn_base_url("", "http://127.0.0.1:9000/", "nf", "eu-west-1") == "http://127.0.0.1:9000/nf"
    assert cdn_base_url("", "", "nf", "eu-west-1") == "https://nf.s3.eu-west-1.amazonaws.com"


def test_one_photo_takes_one_upload_from_the_gateway_limits() -> None:
    # Request and confirm of one photo: only the request counts as an upload, so the gateway lets
    # through at least the uploads an hour that the photo rules grant.
    taken = checks(["requestPhotoUpload", "confirmPhotoUpload"], "ann", "192.0.2.1", 1.0)
    assert [(c.key, c.cost) for c in taken if c.key.startswith("upload:")] == [
        ("upload:u:ann", 1), ("upload:ip:192.0.2.1", 1)]
    per_user = RULES["upload"].per_user
    assert per_user is not None and per_user.seconds == 3600 and per_user.count >= PhotoLimits().uploads_per_hour


GREEN, WHITE = (20, 200, 20), (250, 250, 250)
# How a camera stores an upright picture under each EXIF orientation: the inverse of the turn that
# orientation asks a viewer for (6: turn clockwise to view, so stored turned counter-clockwise).
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def quadrants(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height // 2))
    image.paste(GREEN, (0, height // 2, width // 2, height))
    image.paste(WHITE, (width // 2, height // 2, width, height))
    return image


def close(pixel: object, colour: tuple[int, int, int]) -> bool:
    assert isinstance(pixel, tuple)
    return max(abs(a - b) for a, b in zip(pixel, colour, strict=True)) < 40


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_every_exif_orientation_comes_out_upright(orientation: int) -> None:
    turn = STORED_AS[orientation]
    upright = quadrants(800, 600)
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    renditions = process(out.getvalue())
    assert isinstance(renditions, list)
    for rendition in renditions:
        image = _decode(rendition.jpeg)
        w, h = image.size
        assert (w, h) == (rendition.size.width, rendition.size.height) and w > h
        corners = [image.getpixel((w // 4, h // 4)), image.getpixel((3 * w // 4, h // 4)),
                   image.getpixel((w // 4, 3 * h // 4)), image.getpixel((3 * w // 4, 3 * h // 4))]
        assert all(close(p, c) for p, c in zip(corners, (RED, BLUE, GREEN, WHITE), strict=True)), corners
        assert metadata_left(rendition.jpeg) == set()


@pytest.mark.parametrize("format_", ["PNG", "WEBP"])
def test_png_and_webp_lose_their_metadata_too(format_: str) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    out = io.BytesIO()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret place</x:xmpmeta>'
    text = PngInfo()  # PNG keeps XMP and comments in text chunks
    text.add_itxt("XML:com.adobe.xmp", xmp.decode())
    text.add_text("Comment", "taken at home")
    halves(800, 600).save(out, format_, exif=exif.tobytes(), icc_profile=srgb_icc(), xmp=xmp, pnginfo=text)
    source = Image.open(io.BytesIO(out.getvalue()))
    assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo) and b"secret place" in out.getvalue()
    renditions = process(out.getvalue())
    assert isinstance(renditions, list)
    for rendition in renditions:
        image = _decode(rendition.jpeg)
        assert metadata_left(rendition.jpeg) == set() and image.info["icc_profile"] == srgb_icc()
        assert image.height > image.width and close(image.getpixel((image.width // 2, 5)), RED)
