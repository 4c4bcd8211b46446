import asyncio
import json
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.archive import GETS_PER_PAGE, Segment
from domain.chat import Message
from infra.archive_keys import Sealer
from infra.chat_codec import decode_message
from infra.pg_archive import PgArchiveIndex
from infra.streams import StreamSpec

# Under this prefix of the bucket; never public (photos/ is the only public prefix).
PREFIX = "chat-archive"
ARCHIVE_WRITER = "archive-writer"


def windows_spec(prefix: str, partitions: int) -> StreamSpec:
    """Closed windows on their way from the aggregator to the archive writer: partition N of the chat
    stream hands its windows to partition N of this one, in order."""
    return StreamSpec("chat-windows", partitions, prefix, (ARCHIVE_WRITER,))


@dataclass(frozen=True)
class Window:
    """A closed window of one partition: the entries after `prev` up to `last`, as one object."""

    start: int  # ms
    prev: str  # the archived position it was built on
    last: str
    fence: int  # of the aggregator that built it: a newer owner's windows supersede it
    key: str
    body: bytes
    segments: list[Segment]


def encode_window(window: Window) -> dict[str, bytes]:
    rows = [[str(s.chat_id), s.seq_from, s.seq_to, s.messages, s.offset, s.length] for s in window.segments]
    head = {"start": window.start, "prev": window.prev, "last": window.last, "fence": window.fence,
            "key": window.key, "segments": rows}
    return {"h": json.dumps(head, separators=(",", ":")).encode(), "o": window.body}


def decode_window(fields: dict[bytes, bytes]) -> Window:
    head = json.loads(fields[b"h"])
    key = str(head["key"])
    segments = [Segment(uuid.UUID(c), int(a), int(b), int(n), key, int(o), int(ln))
                for c, a, b, n, o, ln in head["segments"]]
    return Window(int(head["start"]), str(head["prev"]), str(head["last"]), int(head["fence"]), key,
                  fields.get(b"o", b""), segments)


def object_key(partition: int, window_start: int, last_entry: str) -> str:
    # The same window built again (a replay after a crash) has the same key and overwrites itself;
    # a window built differently (another owner's) gets another key and never clobbers a committed one.
    return f"{PREFIX}/{partition:04d}/{window_start}-{last_entry}.z"


_SEQ, _CHAT = b'{"seq":', b',"chat":"'
# A window's messages by chat as they arrive: the chat id as the log spells it -> (seq, message) pairs.
Runs = dict[bytes, list[tuple[int, bytes]]]
# Under this key, what could not be read as a message: taking it must not fail (the log holds it
# already), so it fails where it always did, when its window is built.
_UNREAD = b""


def _read_message(raw: bytes) -> tuple[bytes, int]:
    data = json.loads(raw)
    return str(data["chat"]).encode(), int(data["seq"])


def group_into(runs: Runs, messages: Iterable[bytes]) -> None:
    """Adds each message (empty ones are no message) to its chat's run: done batch by batch as they
    arrive, closing a window has nothing left to parse."""
    head, head_len, tag, tag_len = _SEQ, len(_SEQ), _CHAT, len(_CHAT)
    for raw in messages:
        if not raw:
            continue
        # The chat log writes '{"seq":N,"id":"...","chat":"<uuid>",...' (infra/chat_codec.py): read the
        # two fields in place, as parsing every message's JSON was most of the cost of archiving it.
        comma = raw.find(b",", head_len)
        at = raw.find(tag, comma, 120)
        if comma > 0 and at > 0 and raw.startswith(head):
            chat, seq = raw[at + tag_len:at + tag_len + 36], int(raw[head_len:comma])
        else:
            try:
                chat, seq = _read_message(raw)
            except (ValueError, KeyError, TypeError):
                chat, seq = _UNREAD, 0
        found = runs.get(chat)
        if found is None:
            runs[chat] = [(seq, raw)]
        else:
            found.append((seq, raw))


def runs_by_chat(runs: Runs) -> dict[uuid.UUID, list[tuple[int, bytes]]]:
    by_chat: dict[uuid.UUID, list[tuple[int, bytes]]] = {}
    for chat, found in runs.items():
        if chat == _UNREAD:
            for _, raw in found:
                text, seq = _read_message(raw)  # raises
                by_chat.setdefault(uuid.UUID(text.decode()), []).append((seq, raw))
        else:
            by_chat.setdefault(uuid.UUID(chat.decode()), []).extend(found)  # one chat however it was spelt
    return by_chat


def group_by_chat(messages: list[bytes]) -> dict[uuid.UUID, list[tuple[int, bytes]]]:
    runs: Runs = {}
    group_into(runs, messages)
    return runs_by_chat(runs)


def build_object(key: str, by_chat: dict[uuid.UUID, list[tuple[int, bytes]]],
                 data_keys: Mapping[uuid.UUID, bytes | None]) -> tuple[bytes, list[Segment]]:
    """One window's messages as one object: chats in id order, each its own compressed run of JSON
    lines in seq order sealed with the chat's data key, so one range read returns one chat's part of
    the window. A chat erased before its window closed is left out."""
    parts: list[bytes] = []
    segments: list[Segment] = []
    offset = 0
    for chat_id in sorted(by_chat):
        data_key = data_keys.get(chat_id)
        if data_key is None:
            continue
        run = sorted(by_chat[chat_id])
        # Level 1: a third of level 6's time for a few percent more bytes, and closing windows is on
        # every message's way; any level reads back with the same decompress.
        packed = Sealer.seal(data_key, chat_id, run[0][0], zlib.compress(b"\n".join(raw for _, raw in run), 1))
        segments.append(Segment(chat_id, run[0][0], run[-1][0], len(run), key, offset, len(packed)))
        parts.append(packed)
        offset += len(packed)
    return b"".join(parts), segments


def read_segment(data_key: bytes, segment: Segment, data: bytes) -> list[Message]:
    plain = zlib.decompress(Sealer.open(data_key, segment.chat_id, segment.seq_from, data))
    return [decode_message(line) for line in plain.split(b"\n") if line]


class S3Objects:
    """Archive objects in the bucket; boto3 blocks, so every call runs in a thread."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3, self._bucket = client, bucket

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._s3.put_object, Bucket=self._bucket, Key=key, Body=data)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        def get() -> bytes:
            found = self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
            with found["Body"] as body:
                data: bytes = body.read()
                return data

        return await asyncio.to_thread(get)


class S3ChatArchive:
    def __init__(self, index: PgArchiveIndex, objects: S3Objects, sealer: Sealer) -> None:
        self._index, self._objects, self._sealer = index, objects, sealer

    async def page(self, chat_id: uuid.UUID, after: int | None, before: int | None, limit: int,
                   newest: bool) -> tuple[list[Message], bool]:
        segments, wrapped = await self._index.segments(chat_id, after, before, GETS_PER_PAGE + 1, newest)
        if wrapped is None:
            return [], False
        data_key = self._sealer.unwrap(chat_id, wrapped)
        found: list[Message] = []
        read = 0
        for segment in segments[:GETS_PER_PAGE]:
            if len(found) >= limit:
                break
            data = await self._objects.read(segment.object_key, segment.offset, segment.length)
            got = [m for m in read_segment(data_key, segment, data)
                   if (after is None or m.seq > after) and (before is None or m.seq < before)]
            found = got + found if newest else found + got
            read += 1
        beyond = len(segments) > read or len(found) > limit
        return (found[-limit:] if newest else found[:limit]) if limit else [], beyond
