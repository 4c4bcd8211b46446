from collections.abc import AsyncGenerator

import strawberry

from resolvers import accounts, chats, events, nearby, photos, profiles, swipes
from resolvers.context import Info
from schema.accounts import (
    AuthResult,
    DeleteAccountResult,
    InterestTagGQL,
    MeGQL,
    PersonGQL,
    UpdateProfileResult,
)
from schema.chats import ChatEventGQL, MarkReadResult, MessageConnectionGQL, SendMessageResult, SetTypingResult
from schema.events import MyEvent
from schema.nearby import CandidateConnectionGQL, MyLocationGQL, UpdateLocationResult
from schema.photos import (
    ConfirmPhotoUploadResult,
    DeletePhotoResult,
    ReorderPhotosResult,
    RequestPhotoUploadResult,
)
from schema.swipes import MatchConnectionGQL, RelationResult, SwipeResult


@strawberry.type
class Query:
    me: MeGQL = strawberry.field(resolver=accounts.me, description="The signed-in account.")
    person: PersonGQL | None = strawberry.field(
        resolver=accounts.person, description="Another user's public profile; NOT_FOUND if you may not see them."
    )
    interest_tags: list[InterestTagGQL] = strawberry.field(
        resolver=accounts.interest_tags, description="The catalogue of interest tags a profile may carry."
    )
    matches: MatchConnectionGQL = strawberry.field(
        resolver=swipes.matches, description="Your current matches, newest first."
    )
    nearby_candidates: CandidateConnectionGQL = strawberry.field(
        resolver=nearby.nearby_candidates,
        description="People near you who fit what you look for (and whose settings fit you), best first. "
        "LOCATION_REQUIRED until your position is known (from updateLocation, or from signing in).",
    )
    my_location: MyLocationGQL | None = strawberry.field(
        resolver=nearby.my_location, description="How discovery places you; null while unknown."
    )
    messages: MessageConnectionGQL = strawberry.field(
        resolver=chats.messages,
        description="A chat's messages by seq: the latest `last` (default 20) before `before`, or the first "
        "`first` after `after`. NOT_FOUND for a chat you are not in, or one that ended.",
    )


@strawberry.type
class Mutation:
    sign_up: AuthResult = strawberry.mutation(resolver=accounts.sign_up)
    log_in: AuthResult = strawberry.mutation(resolver=accounts.log_in)
    refresh_token: AuthResult = strawberry.mutation(
        resolver=accounts.refresh_token, description="Trade a refresh token for new tokens (rotation)."
    )
    log_out: bool = strawberry.mutation(resolver=accounts.log_out, description="End this session.")
    log_out_everywhere: bool = strawberry.mutation(
        resolver=accounts.log_out_everywhere, description="End every session; open sockets close with 4401."
    )
    delete_account: DeleteAccountResult = strawberry.mutation(resolver=accounts.delete_account)
    update_profile: UpdateProfileResult = strawberry.mutation(resolver=profiles.update_profile)
    update_location: UpdateLocationResult = strawberry.mutation(
        resolver=nearby.update_location,
        description="Your device's position. It is rounded to a cell before it is stored; nobody sees it.",
    )
    like: SwipeResult = strawberry.mutation(
        resolver=swipes.like, description="Accepted at once; a mutual like arrives as MatchCreated on myEvents."
    )
    dislike: SwipeResult = strawberry.mutation(resolver=swipes.dislike)
    super_like: SwipeResult = strawberry.mutation(
        resolver=swipes.super_like, description="A like they see first among their candidates; daily quota."
    )
    undo_last_swipe: SwipeResult = strawberry.mutation(
        resolver=swipes.undo_last_swipe,
        description="Take back your last swipe within a few minutes, unless it matched.",
    )
    unmatch: RelationResult = strawberry.mutation(
        resolver=swipes.unmatch, description="Final: neither of you is shown to the other again."
    )
    block: RelationResult = strawberry.mutation(
        resolver=swipes.block, description="Each of you disappears for the other, everywhere."
    )
    report: RelationResult = strawberry.mutation(
        resolver=swipes.report, description="Sent to moderation; also blocks them."
    )
    request_photo_upload: RequestPhotoUploadResult = strawberry.mutation(
        resolver=photos.request_photo_upload,
        description="Permission to upload one photo (JPEG, PNG, WebP or HEIC, byteSize bytes exactly) for a few "
        "minutes; at most 6 photos a profile.",
    )
    confirm_photo_upload: ConfirmPhotoUploadResult = strawberry.mutation(
        resolver=photos.confirm_photo_upload,
        description="The file is uploaded: it is checked and resized, then PhotoChanged arrives on myEvents.",
    )
    reorder_photos: ReorderPhotosResult = strawberry.mutation(
        resolver=photos.reorder_photos, description="All your photos' ids, in the order others should see them."
    )
    delete_photo: DeletePhotoResult = strawberry.mutation(
        resolver=photos.delete_photo, description="The photo and its files go; answers the photos left."
    )
    send_message: SendMessageResult = strawberry.mutation(
        resolver=chats.send_message,
        description="Answers once the message is accepted (durable); the same clientMessageId again (within a "
        "day) returns the first answer and sends nothing. CHAT_CLOSED once the match ended.",
    )
    mark_read: MarkReadResult = strawberry.mutation(
        resolver=chats.mark_read, description="Everything up to upToSeq is read; the other person sees a ReadReceipt."
    )
    set_typing: SetTypingResult = strawberry.mutation(
        resolver=chats.set_typing,
        description="The other person sees Typing for a few seconds; at most once every 2 seconds, never stored.",
    )


@strawberry.type(name="Mutation")
class BenchMutation(Mutation):
    # Only with NEWFRIENDS_BENCH_NOOP=1: the floor a mutation costs (HTTP, GraphQL, authentication),
    # against which bench/swipes.py measures the like path. Never part of the exported schema.
    @strawberry.mutation
    async def bench_noop(self, info: Info) -> bool:
        await info.context.require_user()
        return True


@strawberry.type
class Subscription:
    # The resolvers themselves, not generators around them: one generator less per subscription,
    # held as long as it lasts.
    my_events: AsyncGenerator[MyEvent, None] = strawberry.subscription(
        resolver=events.my_events, description="Everything that happens to you, live.")
    chat_events: AsyncGenerator[ChatEventGQL, None] = strawberry.subscription(
        resolver=chats.chat_events,
        description="A chat, live: every message after afterSeq first (none when omitted), in order, then what "
        "happens from now on, with nothing lost or repeated in between. Ends after ChatClosed.",
    )
