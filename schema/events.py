from typing import Annotated

import strawberry

from schema.accounts import MeGQL
from schema.chats import NewMessageGQL
from schema.photos import PhotoChangedGQL
from schema.swipes import MatchCreatedGQL, MatchEndedGQL


@strawberry.type(name="ProfileChanged", description="Your profile changed (possibly on another device).")
class ProfileChangedGQL:
    me: MeGQL


# Later features add their events here (matches, messages, ...): clients switch on __typename.
MyEvent = Annotated[ProfileChangedGQL | MatchCreatedGQL | MatchEndedGQL | NewMessageGQL | PhotoChangedGQL,
                    strawberry.union("MyEvent")]
