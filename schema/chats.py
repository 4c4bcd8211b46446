import datetime as dt
import uuid
from typing import Annotated

import strawberry

from domain.chat import TYPING_SECONDS, Message
from schema.accounts import DoneGQL
from schema.errors import InputErrorGQL, LimitErrorGQL, NotFoundErrorGQL, StateErrorGQL


@strawberry.type(name="Message", description="One chat message. Its chat is the match with the same id.")
class MessageGQL:
    id: strawberry.ID = strawberry.field(description="Time-sortable, unique across chats.")
    chat_id: strawberry.ID
    seq: int = strawberry.field(
        description="1, 2, 3, ... within its chat, without gaps; pass the last one you hold as chatEvents(afterSeq:)."
    )
    sender_id: strawberry.ID
    from_me: bool
    client_message_id: str = strawberry.field(description="The sender's own id for it, as sent.")
    text: str
    sent_at: dt.datetime

    @classmethod
    def from_domain(cls, message: Message, viewer: uuid.UUID) -> "MessageGQL":
        return cls(id=strawberry.ID(str(message.id)), chat_id=strawberry.ID(str(message.chat_id)), seq=message.seq,
                   sender_id=strawberry.ID(str(message.sender_id)), from_me=message.sender_id == viewer,
                   client_message_id=message.client_message_id, text=message.text, sent_at=message.sent_at)


@strawberry.type(name="MessageEdge")
class MessageEdgeGQL:
    cursor: str
    node: MessageGQL


@strawberry.type(name="MessagePageInfo")
class MessagePageInfoGQL:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(name="MessageConnection", description="Messages in ascending seq order.")
class MessageConnectionGQL:
    edges: list[MessageEdgeGQL]
    page_info: MessagePageInfoGQL


@strawberry.type(name="MessageSent", description="A new message in the chat (yours too, from any device).")
class MessageSentGQL:
    message: MessageGQL


@strawberry.type(name="ReadReceipt", description="Someone in the chat has read every message up to upToSeq.")
class ReadReceiptGQL:
    chat_id: strawberry.ID
    user_id: strawberry.ID
    up_to_seq: int


@strawberry.type(name="Typing", description="The other person is typing; show it for expiresInSeconds unless renewed.")
class TypingGQL:
    chat_id: strawberry.ID
    user_id: strawberry.ID
    expires_in_seconds: int = TYPING_SECONDS


@strawberry.type(name="ChatClosed", description="The chat ended (the match ended): nothing more can be sent or seen.")
class ChatClosedGQL:
    chat_id: strawberry.ID


@strawberry.type(name="NewMessage", description="A message in one of your chats (for badges); fromMe tells whose.")
class NewMessageGQL:
    message: MessageGQL


@strawberry.type(name="ReadState")
class ReadStateGQL:
    chat_id: strawberry.ID
    up_to_seq: int = strawberry.field(description="Everything up to here is read (never past the last message).")


ChatEventGQL = Annotated[MessageSentGQL | ReadReceiptGQL | TypingGQL | ChatClosedGQL, strawberry.union("ChatEvent")]
SendMessageResult = Annotated[MessageGQL | InputErrorGQL | NotFoundErrorGQL | StateErrorGQL,
                              strawberry.union("SendMessageResult")]
MarkReadResult = Annotated[ReadStateGQL | InputErrorGQL | NotFoundErrorGQL | StateErrorGQL,
                           strawberry.union("MarkReadResult")]
SetTypingResult = Annotated[DoneGQL | NotFoundErrorGQL | StateErrorGQL | LimitErrorGQL,
                            strawberry.union("SetTypingResult")]
