import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from domain.errors import Code, DomainError, InputError, LimitReached, NotFound
from domain.events import PhotoChanged, ProfileChanged
from domain.ids import new_id, parse_id
from domain.ports import EventPublisher, Quotas

MAX_PHOTOS = 6
# Content types a client may announce, and the decoded format each stands for. What is stored is
# what the pixels turn out to be, whatever was announced: the announcement only picks the upload's type.
CONTENT_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/heic": "HEIF",
                 "image/heif": "HEIF"}
MAX_BYTES = 20_000_000
MIN_SIDE = 200
# A decompression bomb is refused from its header, before a single pixel is decoded: 50 megapixels
# is more than any phone camera's default, and decodes to at most 200 MB.
MAX_PIXELS = 50_000_000
MAX_SIDE = 20_000
MAX_ASPECT = 4.0
# Output widths, widest first: the profile view and the card / thumbnail.
WIDTHS = (1080, 320)


class PhotoState(str, Enum):
    PROCESSING = "PROCESSING"
    READY = "READY"
    REJECTED = "REJECTED"


class Rejection(str, Enum):
    NOT_UPLOADED = "NOT_UPLOADED"  # nothing arrived before the worker looked (or the store refused it)
    FILE_TOO_LARGE = "FILE_TOO_LARGE"  # larger than announced
    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    DAMAGED = "DAMAGED"  # an image header, but the pixels do not decode (truncated, corrupt)
    TOO_SMALL = "TOO_SMALL"
    TOO_MANY_PIXELS = "TOO_MANY_PIXELS"
    BAD_SHAPE = "BAD_SHAPE"
    PROCESSING_FAILED = "PROCESSING_FAILED"  # kept failing for reasons of ours; try another file


@dataclass(frozen=True)
class Size:
    width: int
    height: int


@dataclass(frozen=True)
class Photo:
    id: uuid.UUID
    user_id: uuid.UUID
    state: PhotoState
    position: int
    created_at: datetime
    rejection: Rejection | None = None
    # Public object keys and their sizes, widest first; empty until READY.
    renditions: tuple[tuple[str, Size], ...] = ()


@dataclass(frozen=True)
class UploadTicket:
    """Where and how the client sends the file: a PUT to url with exactly these headers."""

    upload_id: uuid.UUID
    url: str
    headers: tuple[tuple[str, str], ...]
    expires_at: datetime


class PhotoRepo(Protocol):
    # False when the profile already holds max_photos (pending uploads count until they expire).
    async def create_upload(self, user_id: uuid.UUID, photo_id: uuid.UUID, content_type: str, byte_size: int,
                            expires_at: datetime, max_photos: int, now: datetime) -> bool: ...
    # None: no such upload, or it expired; changed is False when it was confirmed before.
    async def confirm(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> tuple[Photo, bool] | None: ...
    async def own(self, user_id: uuid.UUID) -> list[Photo]: ...  # everything but pending uploads, in order
    async def get(self, user_id: uuid.UUID, photo_id: uuid.UUID) -> Photo | None: ...
    # READY photos of each owner the viewer may see (nobody either of them blocked).
    async def visible(self, viewer_id: uuid.UUID, owner_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Photo]]: ...
    async def reorder(self, user_id: uuid.UUID, order: list[uuid.UUID], now: datetime) -> bool: ...
    # The objects go with the rows, through a queue the photo worker drains.
    async def delete(self, user_id: uuid.UUID, photo_id: uuid.UUID, now: datetime) -> bool: ...
    async def delete_all(self, user_id: uuid.UUID, now: datetime) -> None: ...


class PhotoStorage(Protocol):
    async def presign_upload(self, key: str, content_type: str, byte_size: int, ttl: timedelta
                             ) -> tuple[str, tuple[tuple[str, str], ...]]: ...
    def public_url(self, key: str) -> str: ...


@dataclass(frozen=True)
class PhotoLimits:
    max_photos: int = MAX_PHOTOS
    max_bytes: int = MAX_BYTES
    upload_ttl: timedelta = timedelta(minutes=5)
    uploads_per_hour: int = 30


@dataclass(frozen=True)
class PhotoDeps:
    photos: PhotoRepo
    storage: PhotoStorage
    quotas: Quotas
    events: EventPublisher
    limits: PhotoLimits = PhotoLimits()


def upload_key(user_id: uuid.UUID, photo_id: uuid.UUID) -> str:
    return f"uploads/{user_id}/{photo_id}"


def public_key(token: str, width: int) -> str:
    # The token, not the ids, names public objects: whoever learns a photo's id (a person blocked
    # since, say) cannot derive its URL.
    return f"photos/{token}/{width}.jpg"


def check_announced(content_type: str, byte_size: int, limits: PhotoLimits) -> str:
    normal = content_type.strip().lower()
    if normal not in CONTENT_TYPES:
        raise InputError(Code.UNSUPPORTED_PHOTO_TYPE, "Photos must be JPEG, PNG, WebP or HEIC", "contentType")
    if byte_size < 1:
        raise InputError(Code.INVALID_INPUT, "byteSize must be the photo's size in bytes, at least 1", "byteSize")
    if byte_size > limits.max_bytes:
        raise InputError(Code.PHOTO_TOO_LARGE, f"Photos are limited to {limits.max_bytes // 1_000_000} MB",
                         "byteSize")
    return normal


def check_decoded(format_: str | None, width: int, height: int) -> Rejection | None:
    """The verdict on an image from its header alone, before its pixels are decoded."""
    if format_ not in CONTENT_TYPES.values():
        return Rejection.UNSUPPORTED_FORMAT
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        return Rejection.TOO_MANY_PIXELS
    if min(width, height) < MIN_SIDE:
        return Rejection.TOO_SMALL
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return Rejection.BAD_SHAPE
    return None


def output_sizes(width: int, height: int) -> list[tuple[int, Size]]:
    """(target width, size) pairs, widest first. Never enlarged: a narrower original is written once,
    under the widest target it stands in for."""
    sizes: list[tuple[int, Size]] = []
    for target in WIDTHS:
        w = min(target, width)
        size = Size(w, max(1, round(height * w / width)))
        if all(size != s for _, s in sizes):
            sizes.append((target, size))
    return sizes


def reordered(current: list[uuid.UUID], wanted: list[str]) -> list[uuid.UUID]:
    ids = [parse_id(raw) for raw in wanted]
    if any(i is None for i in ids) or len(set(ids)) != len(ids) or set(ids) != set(current):
        raise InputError(Code.INVALID_INPUT, "List each of your photos exactly once, in the order you want",
                         "photoIds")
    return [i for i in ids if i is not None]


async def request_upload(deps: PhotoDeps, user_id: uuid.UUID, content_type: str, byte_size: int,
                         now: datetime) -> UploadTicket:
    normal = check_announced(content_type, byte_size, deps.limits)
    photo_id = new_id()
    wait = await deps.quotas.take(user_id, "photo-uploads", deps.limits.uploads_per_hour, timedelta(hours=1), now,
                                  str(photo_id))
    if wait:
        raise LimitReached(Code.RATE_LIMITED, "Too many uploads in the last hour", wait)
    expires = now + deps.limits.upload_ttl
    if not await deps.photos.create_upload(user_id, photo_id, normal, byte_size, expires, deps.limits.max_photos,
                                           now):
        await deps.quotas.give_back(user_id, "photo-uploads", str(photo_id))
        raise DomainError(Code.TOO_MANY_PHOTOS, f"A profile holds at most {deps.limits.max_photos} photos")
    url, headers = await deps.storage.presign_upload(upload_key(user_id, photo_id), normal, byte_size,
                                                     deps.limits.upload_ttl)
    return UploadTicket(photo_id, url, headers, expires)


async def confirm_upload(deps: PhotoDeps, user_id: uuid.UUID, raw_id: str, now: datetime) -> Photo:
    photo_id = parse_id(raw_id)
    found = None if photo_id is None else await deps.photos.confirm(user_id, photo_id, now)
    if found is None:
        raise NotFound("Upload")
    photo, changed = found
    if changed:
        await deps.events.publish(PhotoChanged(user_id, photo.id))
    return photo


async def delete_photo(deps: PhotoDeps, user_id: uuid.UUID, raw_id: str, now: datetime) -> None:
    photo_id = parse_id(raw_id)
    if photo_id is None or not await deps.photos.delete(user_id, photo_id, now):
        raise NotFound("Photo")
    await deps.events.publish(ProfileChanged(user_id))


async def reorder(deps: PhotoDeps, user_id: uuid.UUID, wanted: list[str], now: datetime) -> list[Photo]:
    current = await deps.photos.own(user_id)
    order = reordered([p.id for p in current], wanted)
    if order != [p.id for p in current]:
        if not await deps.photos.reorder(user_id, order, now):
            raise DomainError(Code.PHOTOS_CHANGED, "Your photos changed meanwhile; reload them and try again")
        await deps.events.publish(ProfileChanged(user_id))
    return await deps.photos.own(user_id)


async def account_deleted(deps: PhotoDeps, user_id: uuid.UUID, now: datetime) -> None:
    await deps.photos.delete_all(user_id, now)
