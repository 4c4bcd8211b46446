import datetime as dt
from collections.abc import Callable
from typing import Annotated

import strawberry

from domain.photos import Photo, PhotoState, Rejection, UploadTicket
from schema.errors import InputErrorGQL, LimitErrorGQL, NotFoundErrorGQL, StateErrorGQL

PhotoStateGQL = strawberry.enum(PhotoState, name="PhotoState")
PhotoRejectionGQL = strawberry.enum(Rejection, name="PhotoRejection", description="Why a photo was refused.")


@strawberry.type(name="PhotoSize")
class PhotoSizeGQL:
    width: int
    height: int
    url: str


@strawberry.type(name="Photo", description="Others only ever see READY photos; their state is for you.")
class PhotoGQL:
    id: strawberry.ID
    state: PhotoState
    rejection: Rejection | None = strawberry.field(description="Set when the state is REJECTED.")
    sizes: list[PhotoSizeGQL] = strawberry.field(description="Widest first; empty until READY.")
    url: str | None = strawberry.field(description="The widest size's URL; null until READY.")
    created_at: dt.datetime

    @classmethod
    def from_domain(cls, photo: Photo, public_url: Callable[[str], str]) -> "PhotoGQL":
        sizes = [PhotoSizeGQL(width=s.width, height=s.height, url=public_url(key)) for key, s in photo.renditions]
        return cls(id=strawberry.ID(str(photo.id)), state=photo.state, rejection=photo.rejection, sizes=sizes,
                   url=sizes[0].url if sizes else None, created_at=photo.created_at)


@strawberry.type(name="UploadHeader")
class UploadHeaderGQL:
    name: str
    value: str


@strawberry.type(
    name="PhotoUpload",
    description="Send the file as the body of a PUT to url with exactly these headers, before expiresAt; "
    "then call confirmPhotoUpload(uploadId).",
)
class PhotoUploadGQL:
    upload_id: strawberry.ID
    url: str
    method: str
    headers: list[UploadHeaderGQL]
    expires_at: dt.datetime

    @classmethod
    def from_domain(cls, ticket: UploadTicket) -> "PhotoUploadGQL":
        return cls(upload_id=strawberry.ID(str(ticket.upload_id)), url=ticket.url, method="PUT",
                   headers=[UploadHeaderGQL(name=n, value=v) for n, v in ticket.headers],
                   expires_at=ticket.expires_at)


@strawberry.type(name="PhotoList")
class PhotoListGQL:
    photos: list[PhotoGQL]


@strawberry.type(name="PhotoChanged", description="One of your photos is ready or was rejected.")
class PhotoChangedGQL:
    photo: PhotoGQL


RequestPhotoUploadResult = Annotated[
    PhotoUploadGQL | InputErrorGQL | LimitErrorGQL | StateErrorGQL, strawberry.union("RequestPhotoUploadResult")
]
ConfirmPhotoUploadResult = Annotated[PhotoGQL | NotFoundErrorGQL, strawberry.union("ConfirmPhotoUploadResult")]
ReorderPhotosResult = Annotated[PhotoListGQL | InputErrorGQL | StateErrorGQL, strawberry.union("ReorderPhotosResult")]
DeletePhotoResult = Annotated[PhotoListGQL | NotFoundErrorGQL, strawberry.union("DeletePhotoResult")]
