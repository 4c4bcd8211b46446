import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from domain import chat
from domain.chat import ChatDeps, Membership, Message

# A page reads at most this many archived segments (one S3 range read each); it may stop early at a
# segment boundary and say there is more, so its cost never grows with the page size.
GETS_PER_PAGE = 2


@dataclass(frozen=True)
class Segment:
    """One chat's messages of one window: a byte range of the window's object, seqs ascending."""

    chat_id: uuid.UUID
    seq_from: int
    seq_to: int
    messages: int
    object_key: str
    offset: int
    length: int


class ChatArchive(Protocol):
    # Archived messages strictly between after and before, ascending: the oldest `limit` or, newest=True,
    # the newest `limit` of those; and whether archived ones lie beyond them in the reading direction.
    async def page(self, chat_id: uuid.UUID, after: int | None, before: int | None, limit: int,
                   newest: bool) -> tuple[list[Message], bool]: ...


async def history(deps: ChatDeps, archive: ChatArchive | None, user_id: uuid.UUID, raw_chat_id: str,
                  after: int | None, before: int | None, limit: int, newest: bool
                  ) -> tuple[Membership, list[Message], bool]:
    """chat.history across the recent store and the archive. The recent store holds a chat's newest
    messages without a hole, so whatever lies below its oldest comes from the archive, and nothing
    the two both hold is read twice."""
    member, found, more = await chat.history(deps, user_id, raw_chat_id, after, before, limit, newest)
    if archive is None or (more and newest):
        return member, found, more
    oldest = await deps.log.page(member.chat_id, None, None, 1)
    floor = oldest[0].seq if oldest else None
    if floor is not None and after is not None and after + 1 >= floor:
        return member, found, more  # nothing asked for lies below the recent store
    # Below what was just read too: the store may have moved on since.
    bounds = [b for b in (before, floor, found[0].seq if found else None) if b is not None]
    below = min(bounds) if bounds else None
    if newest:
        wanted = limit + 1 - len(found)
        older, beyond = await archive.page(member.chat_id, after, below, wanted, True)
        joined = older + found
        return member, joined[-limit:], len(joined) > limit or beyond
    older, beyond = await archive.page(member.chat_id, after, below, limit + 1, False)
    if beyond or len(older) > limit:
        return member, older[:limit], True
    joined = older + found
    return member, joined[:limit], len(joined) > limit or more


def erase_after(now: datetime, reported: bool, report_hold: timedelta) -> datetime:
    """When an ended chat's archive becomes unreadable: at once, unless either side reported the
    other, in which case moderation may still read it for report_hold."""
    return now + report_hold if reported else now
