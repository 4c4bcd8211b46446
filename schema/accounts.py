import datetime as dt
import uuid
from typing import Annotated

import strawberry

from domain.model import Gender, User, Visibility, age_on
from domain.tags import BY_SLUG, Tag
from resolvers.context import Info
from resolvers.photos import own_photos, visible_photos
from schema.errors import AuthErrorGQL, InputErrorGQL, LimitErrorGQL
from schema.photos import PhotoGQL

GenderGQL = strawberry.enum(Gender, name="Gender")
VisibilityGQL = strawberry.enum(
    Visibility, name="Visibility", description="HIDDEN keeps you out of everyone's discovery."
)


@strawberry.type(name="InterestTag")
class InterestTagGQL:
    slug: str
    label: str
    category: str

    @classmethod
    def from_domain(cls, tag: Tag) -> "InterestTagGQL":
        return cls(slug=tag.slug, label=tag.label, category=tag.category)


# The catalogue is fixed while a process runs: one GraphQL object per tag, shared by every profile.
CATALOGUE_GQL = {slug: InterestTagGQL.from_domain(tag) for slug, tag in BY_SLUG.items()}


def _tags(slugs: tuple[str, ...]) -> list[InterestTagGQL]:
    return [CATALOGUE_GQL[s] for s in slugs if s in CATALOGUE_GQL]


@strawberry.type(name="DiscoverySettings")
class DiscoverySettingsGQL:
    age_min: int
    age_max: int
    max_distance_km: int


@strawberry.type(name="Me", description="The signed-in account, with its private fields.")
class MeGQL:
    id: strawberry.ID
    email: str
    display_name: str
    birth_date: dt.date
    age: int
    gender: Gender
    bio: str
    show_me: list[Gender]
    interest_tags: list[InterestTagGQL]
    discovery: DiscoverySettingsGQL
    visibility: Visibility
    show_activity: bool = strawberry.field(
        description="Whether others may see that you were active recently, and your matches your presence.")
    show_read_receipts: bool = strawberry.field(
        description="Whether your matches see how far you have read; off, you do not see theirs either.")
    created_at: dt.datetime

    @strawberry.field(description="Yours in every state, in the order others see the ready ones.")
    async def photos(self, info: Info) -> list[PhotoGQL]:
        return await own_photos(info, uuid.UUID(self.id))

    @classmethod
    def from_domain(cls, user: User, today: dt.date) -> "MeGQL":
        return cls(
            id=strawberry.ID(str(user.id)), email=user.email, display_name=user.display_name,
            birth_date=user.birth_date, age=age_on(user.birth_date, today), gender=user.gender, bio=user.bio,
            show_me=sorted(user.show_me, key=lambda g: g.value), interest_tags=_tags(user.interest_tags),
            discovery=DiscoverySettingsGQL(
                age_min=user.discovery.age_min, age_max=user.discovery.age_max,
                max_distance_km=user.discovery.max_distance_km,
            ),
            visibility=user.visibility, show_activity=user.show_activity, created_at=user.created_at,
            show_read_receipts=user.show_read_receipts,
        )


@strawberry.type(
    name="Person",
    description="Another user as everyone may see them: no email, birth date, position or distance.",
)
class PersonGQL:
    id: strawberry.ID
    display_name: str
    age: int
    gender: Gender
    bio: str
    interest_tags: list[InterestTagGQL]

    @strawberry.field(description="Ready photos, first the one they chose first; none across a block.")
    async def photos(self, info: Info) -> list[PhotoGQL]:
        return await visible_photos(info, uuid.UUID(self.id))

    @classmethod
    def from_domain(cls, user: User, today: dt.date) -> "PersonGQL":
        return cls(
            id=strawberry.ID(str(user.id)), display_name=user.display_name, age=age_on(user.birth_date, today),
            gender=user.gender, bio=user.bio, interest_tags=_tags(user.interest_tags),
        )


@strawberry.type(name="AuthPayload")
class AuthPayloadGQL:
    access_token: str
    access_token_expires_at: dt.datetime
    refresh_token: str = strawberry.field(description="Single use: every refresh returns a new one.")
    refresh_token_expires_at: dt.datetime
    me: MeGQL


@strawberry.type(name="Done")
class DoneGQL:
    ok: bool = True


@strawberry.input(name="SignUpInput")
class SignUpInput:
    email: str
    password: str = strawberry.field(description="8 to 128 characters.")
    display_name: str
    birth_date: dt.date = strawberry.field(description="You must be 18 or older.")
    gender: Gender


@strawberry.input(name="ProfileInput", description="Fields left out stay as they are.")
class ProfileInput:
    display_name: str | None = None
    bio: str | None = strawberry.field(default=None, description="Up to 500 characters.")
    gender: Gender | None = None
    show_me: list[Gender] | None = strawberry.field(default=None, description="Genders you want to be shown.")
    interest_tags: list[str] | None = strawberry.field(
        default=None, description="Slugs or labels from `interestTags`, at most 10."
    )
    age_min: int | None = None
    age_max: int | None = None
    max_distance_km: int | None = None
    visibility: Visibility | None = None
    show_activity: bool | None = strawberry.field(
        default=None, description="False hides when you were last active (presence included), and ranks you"
                                  " without it."
    )
    show_read_receipts: bool | None = strawberry.field(
        default=None, description="False sends no read receipts, and shows you none of your matches'."
    )


AuthResult = Annotated[AuthPayloadGQL | InputErrorGQL | AuthErrorGQL | LimitErrorGQL, strawberry.union("AuthResult")]
DeleteAccountResult = Annotated[DoneGQL | AuthErrorGQL, strawberry.union("DeleteAccountResult")]
UpdateProfileResult = Annotated[MeGQL | InputErrorGQL, strawberry.union("UpdateProfileResult")]
