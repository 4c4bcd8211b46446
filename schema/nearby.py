import datetime as dt
import itertools
from enum import Enum
from typing import Annotated

import strawberry

from domain.geo import BAND_EDGES_KM
from domain.locations import Source
from domain.model import Gender
from schema.accounts import InterestTagGQL, PersonGQL
from schema.errors import InputErrorGQL, LimitErrorGQL, StateErrorGQL
from schema.swipes import PageInfoGQL

LocationSourceGQL = strawberry.enum(Source, name="LocationSource")


def _band_names() -> list[str]:
    edges = list(BAND_EDGES_KM)
    return ([f"UNDER_{edges[0]}_KM"] + [f"KM_{a}_TO_{b}" for a, b in itertools.pairwise(edges)]
            + [f"OVER_{edges[-1]}_KM"])


DistanceBand = Enum("DistanceBand", {name: name for name in _band_names()}, type=str)  # type: ignore[misc]
DistanceBandGQL = strawberry.enum(DistanceBand, name="DistanceBand",
                                  description="How far someone is, in coarse steps between snapped positions.")
BANDS: list[DistanceBand] = list(DistanceBand)


@strawberry.type(name="MyLocation", description="Where discovery places you; nobody else sees any of it.")
class MyLocationGQL:
    source: Source
    updated_at: dt.datetime
    cell_size_km: float = strawberry.field(description="Others are placed by cells of about this size.")


@strawberry.input(name="NearbyFilter", description="Overrides your saved discovery settings for this list.")
class NearbyFilterInput:
    max_distance_km: int | None = strawberry.field(default=None, description="1 to 500, counted in whole bands.")
    age_min: int | None = None
    age_max: int | None = None
    genders: list[Gender] | None = None


@strawberry.type(name="WhyShown", description="Why this person is in your list, and roughly where they are.")
class WhyShownGQL:
    shared_tags: list[InterestTagGQL]
    distance: DistanceBand  # type: ignore[valid-type]
    distance_label: str = strawberry.field(description='For example "2-5 km".')
    active_recently: bool = strawberry.field(description="Active in the last few days (if they share it).")
    super_liked_you: bool


@strawberry.type(name="Candidate")
class CandidateGQL:
    person: PersonGQL
    why_shown: WhyShownGQL


@strawberry.type(name="CandidateEdge")
class CandidateEdgeGQL:
    cursor: str
    node: CandidateGQL


@strawberry.type(name="CandidateConnection")
class CandidateConnectionGQL:
    edges: list[CandidateEdgeGQL]
    page_info: PageInfoGQL


UpdateLocationResult = Annotated[
    MyLocationGQL | InputErrorGQL | LimitErrorGQL | StateErrorGQL, strawberry.union("UpdateLocationResult")
]
