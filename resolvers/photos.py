import uuid

import strawberry

from domain import photos
from domain.errors import DomainError
from domain.photos import Photo
from resolvers.context import Info
from schema.errors import error_member
from schema.photos import (
    ConfirmPhotoUploadResult,
    DeletePhotoResult,
    PhotoGQL,
    PhotoListGQL,
    PhotoUploadGQL,
    ReorderPhotosResult,
    RequestPhotoUploadResult,
)


def photo_gql(info: Info, photo: Photo) -> PhotoGQL:
    return PhotoGQL.from_domain(photo, info.context.ports.photos.storage.public_url)


def _list(info: Info, found: list[Photo]) -> PhotoListGQL:
    return PhotoListGQL(photos=[photo_gql(info, p) for p in found])


async def own_photos(info: Info, user_id: uuid.UUID) -> list[PhotoGQL]:
    return [photo_gql(info, p) for p in await info.context.ports.photos.photos.own(user_id)]


async def visible_photos(info: Info, owner_id: uuid.UUID) -> list[PhotoGQL]:
    viewer = await info.context.require_user()
    return [photo_gql(info, p) for p in await info.context.loaders.photos.load((viewer.user_id, owner_id))]


async def request_photo_upload(info: Info, content_type: str, byte_size: int) -> RequestPhotoUploadResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        ticket = await photos.request_upload(ports.photos, principal.user_id, content_type, byte_size, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return PhotoUploadGQL.from_domain(ticket)


async def confirm_photo_upload(info: Info, upload_id: strawberry.ID) -> ConfirmPhotoUploadResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        photo = await photos.confirm_upload(ports.photos, principal.user_id, upload_id, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return photo_gql(info, photo)


async def reorder_photos(info: Info, photo_ids: list[strawberry.ID]) -> ReorderPhotosResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        found = await photos.reorder(ports.photos, principal.user_id, [str(i) for i in photo_ids], ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return _list(info, found)


async def delete_photo(info: Info, photo_id: strawberry.ID) -> DeletePhotoResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        await photos.delete_photo(ports.photos, principal.user_id, photo_id, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return _list(info, await ports.photos.photos.own(principal.user_id))
