import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag

from domain.archive import erase_after
from domain.chat import Message
from infra.archive import build_object, group_by_chat, read_segment
from infra.archive_keys import Sealer
from infra.chat_codec import encode_message

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def raw(chat_id: uuid.UUID, seq: int) -> bytes:
    return encode_message(Message(uuid.uuid4(), chat_id, seq, uuid.uuid4(), uuid.uuid4(), f"c{seq}", f"text {seq}",
                                  NOW)).encode()


def test_an_ended_chat_is_erased_at_once_unless_reported() -> None:
    hold = timedelta(days=30)
    assert erase_after(NOW, False, hold) == NOW
    assert erase_after(NOW, True, hold) == NOW + hold


def test_an_object_holds_one_sealed_run_per_chat_and_leaves_erased_chats_out() -> None:
    a, b, erased = sorted(uuid.uuid4() for _ in range(3))
    messages = [raw(c, seq) for seq in (3, 1, 2) for c in (a, b, erased)]
    keys: dict[uuid.UUID, bytes | None] = {a: os.urandom(32), b: os.urandom(32), erased: None}
    body, segments = build_object("k", group_by_chat(messages), keys)
    assert [(s.chat_id, s.seq_from, s.seq_to, s.messages) for s in segments] == [(a, 1, 3, 3), (b, 1, 3, 3)]
    assert sum(s.length for s in segments) == len(body)
    for segment in segments:
        data_key = keys[segment.chat_id]
        assert data_key is not None
        part = body[segment.offset:segment.offset + segment.length]
        assert [m.seq for m in read_segment(data_key, segment, part)] == [1, 2, 3]
        assert b"text" not in part  # sealed, not merely compressed


def test_a_segment_opens_only_with_its_own_chat_key_and_place() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    keys: dict[uuid.UUID, bytes | None] = {a: os.urandom(32), b: os.urandom(32)}
    body, segments = build_object("k", group_by_chat([raw(a, 1), raw(b, 1)]), keys)
    first = segments[0]
    part = body[first.offset:first.offset + first.length]
    other = b if first.chat_id == a else a
    with pytest.raises(ValueError):
        read_segment(os.urandom(32), first, part)  # a destroyed key is not coming back
    own_key = keys[first.chat_id]
    assert own_key is not None
    with pytest.raises(ValueError):  # the same bytes indexed under another chat do not open
        read_segment(own_key, type(first)(other, first.seq_from, first.seq_to, first.messages, first.object_key,
                                          first.offset, first.length), part)


def test_data_keys_are_wrapped_per_chat() -> None:
    sealer, chat_id = Sealer(os.urandom(32)), uuid.uuid4()
    wrapped = sealer.new_wrapped(chat_id)
    assert len(sealer.unwrap(chat_id, wrapped)) == 32
    with pytest.raises(InvalidTag):
        sealer.unwrap(uuid.uuid4(), wrapped)
    assert Sealer.from_secret("s" * 40).unwrap(chat_id, Sealer.from_secret("s" * 40).new_wrapped(chat_id))
