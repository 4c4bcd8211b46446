import json
import uuid
from datetime import UTC, datetime
from typing import Any

from domain.chat import ChatClosed, ChatEvent, Message, MessageSent, ReadReceipt, Typing


def message_tail(draft: Message) -> str:
    """The JSON of a message without its number and opening brace: the chat log's script numbers it
    and completes it as '{"seq":N,' + tail, so that the stream, the store and a retry's answer hold
    the very same text."""
    body = {"id": str(draft.id), "chat": str(draft.chat_id), "from": str(draft.sender_id),
            "to": str(draft.recipient_id), "cmid": draft.client_message_id, "text": draft.text,
            "at": round(draft.sent_at.timestamp() * 1000)}
    # ensure_ascii: Lua and Redis handle bytes, and an escaped text can never break the framing.
    return json.dumps(body, separators=(",", ":"))[1:]


def decode_message(raw: str | bytes | dict[str, Any]) -> Message:
    data = raw if isinstance(raw, dict) else json.loads(raw)
    return Message(uuid.UUID(data["id"]), uuid.UUID(data["chat"]), int(data["seq"]), uuid.UUID(data["from"]),
                   uuid.UUID(data["to"]), str(data["cmid"]), str(data["text"]),
                   datetime.fromtimestamp(int(data["at"]) / 1000, UTC))


def message_event(raw_message: str) -> str:
    # Wrapped, not re-encoded: the pusher forwards thousands a second.
    return '{"t":"m","m":' + raw_message + "}"


def closed_event(chat_id: uuid.UUID) -> str:
    return f'{{"t":"c","chat":"{chat_id}"}}'


def encode_message(message: Message) -> str:
    return f'{{"seq":{message.seq},{message_tail(message)}'


def encode_event(event: ChatEvent) -> str:
    if isinstance(event, MessageSent):
        return message_event(encode_message(event.message))
    if isinstance(event, ReadReceipt):
        return json.dumps({"t": "r", "chat": str(event.chat_id), "user": str(event.user_id), "seq": event.up_to_seq,
                           "p": event.private})
    if isinstance(event, Typing):
        return json.dumps({"t": "y", "chat": str(event.chat_id), "user": str(event.user_id)})
    return closed_event(event.chat_id)


def decode_event(raw: str) -> ChatEvent | None:
    data = json.loads(raw)
    kind = data.get("t")
    if kind == "m":
        return MessageSent(decode_message(data["m"]))
    if kind == "r":
        return ReadReceipt(uuid.UUID(data["chat"]), uuid.UUID(data["user"]), int(data["seq"]), bool(data.get("p")))
    if kind == "y":
        return Typing(uuid.UUID(data["chat"]), uuid.UUID(data["user"]))
    if kind == "c":
        return ChatClosed(uuid.UUID(data["chat"]))
    return None  # a newer process may publish kinds this one does not know yet
