import uuid
from collections.abc import AsyncGenerator

import strawberry

from domain import archive, chat
from domain.chat import ChatClosed, ChatEvent, MessageSent, ReadReceipt, Typing
from domain.cursors import decode_cursor, encode_cursor, page_size
from domain.errors import Code, DomainError, InputError
from resolvers.context import Info
from schema.accounts import DoneGQL
from schema.chats import (
    ChatClosedGQL,
    ChatEventGQL,
    MarkReadResult,
    MessageConnectionGQL,
    MessageEdgeGQL,
    MessageGQL,
    MessagePageInfoGQL,
    MessageSentGQL,
    ReadReceiptGQL,
    ReadStateGQL,
    SendMessageResult,
    SetTypingResult,
    TypingGQL,
)
from schema.errors import error_member


async def send_message(info: Info, chat_id: strawberry.ID, client_message_id: str, text: str) -> SendMessageResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        message = await chat.send(ports.chats, principal.user_id, chat_id, client_message_id, text, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    return MessageGQL.from_domain(message, principal.user_id)


async def mark_read(info: Info, chat_id: strawberry.ID, up_to_seq: int) -> MarkReadResult:
    principal = await info.context.require_user()
    try:
        seq = await chat.mark_read(info.context.ports.chats, principal.user_id, chat_id, up_to_seq)
    except DomainError as exc:
        return error_member(exc)
    return ReadStateGQL(chat_id=chat_id, up_to_seq=seq)


async def set_typing(info: Info, chat_id: strawberry.ID) -> SetTypingResult:
    principal = await info.context.require_user()
    try:
        await chat.set_typing(info.context.ports.chats, principal.user_id, chat_id)
    except DomainError as exc:
        return error_member(exc)
    return DoneGQL()


def _seq_of(info: Info, kind: str, cursor: str | None, name: str) -> int | None:
    if cursor is None:
        return None
    payload = decode_cursor(info.context.ports.cursor_key, kind, cursor, name)
    if len(payload) != 1 or not isinstance(payload[0], int):
        raise InputError(Code.INVALID_CURSOR, "Not a cursor of this list", name)
    return payload[0]


async def messages(info: Info, chat_id: strawberry.ID, first: int | None = None, after: str | None = None,
                   last: int | None = None, before: str | None = None) -> MessageConnectionGQL:
    principal = await info.context.require_user()
    ports = info.context.ports
    if first is not None and last is not None:
        raise InputError(Code.INVALID_INPUT, "Give first or last, not both", "last")
    newest = first is None  # without a direction: the latest messages, as a chat opens
    size = page_size(last if newest else first)
    kind = f"messages:{chat_id}:{principal.user_id}"  # for this chat and this viewer only
    after_seq, before_seq = _seq_of(info, kind, after, "after"), _seq_of(info, kind, before, "before")
    member, found, more = await archive.history(ports.chats, ports.archive, principal.user_id, chat_id, after_seq,
                                                before_seq, size, newest)
    edges = [MessageEdgeGQL(cursor=encode_cursor(ports.cursor_key, kind, [m.seq]),
                            node=MessageGQL.from_domain(m, member.user_id)) for m in found]
    page = MessagePageInfoGQL(
        has_next_page=more if not newest else before_seq is not None,
        has_previous_page=more if newest else after_seq is not None,
        start_cursor=edges[0].cursor if edges else None, end_cursor=edges[-1].cursor if edges else None,
    )
    return MessageConnectionGQL(edges=edges, page_info=page)


def event_gql(event: ChatEvent, viewer: uuid.UUID) -> ChatEventGQL:
    if isinstance(event, MessageSent):
        return MessageSentGQL(message=MessageGQL.from_domain(event.message, viewer))
    if isinstance(event, ReadReceipt):
        return ReadReceiptGQL(chat_id=strawberry.ID(str(event.chat_id)), user_id=strawberry.ID(str(event.user_id)),
                              up_to_seq=event.up_to_seq)
    if isinstance(event, Typing):
        return TypingGQL(chat_id=strawberry.ID(str(event.chat_id)), user_id=strawberry.ID(str(event.user_id)))
    assert isinstance(event, ChatClosed)
    return ChatClosedGQL(chat_id=strawberry.ID(str(event.chat_id)))


async def chat_events(info: Info, chat_id: strawberry.ID, after_seq: int | None = None
                      ) -> AsyncGenerator[ChatEventGQL, None]:
    principal = await info.context.require_user()
    async for event in chat.follow(info.context.ports.chats, principal.user_id, chat_id, after_seq):
        yield event_gql(event, principal.user_id)
