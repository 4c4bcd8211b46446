import asyncio
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# One record: length and CRC of the body, then the body: key, position (two integers), payload.
_HEAD = struct.Struct(">II")
_BODY = struct.Struct(">IQQ")
Position = tuple[int, int]
SEGMENT_BYTES = 64 * 1024 * 1024
SYNC_INTERVAL = 0.01  # at most ~100 fsyncs a second, however many appends wait for them


@dataclass(frozen=True)
class Record:
    key: int
    position: Position
    payload: bytes


@dataclass
class _Segment:
    path: Path
    size: int = 0
    # The highest position held per key: a segment goes once every key's position is done with.
    marks: dict[int, Position] = field(default_factory=dict)


def _read(path: Path) -> Iterator[Record]:
    data = path.read_bytes()
    offset = 0
    while offset + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, offset)
        body = data[offset + _HEAD.size:offset + _HEAD.size + length]
        # A torn or damaged tail (a crash mid-write) ends the segment: nothing after it was synced.
        if len(body) < length or length < _BODY.size or zlib.crc32(body) != crc:
            return
        key, ms, seq = _BODY.unpack_from(body)
        yield Record(key, (ms, seq), body[_BODY.size:])
        offset += _HEAD.size + length


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """A sequential log in numbered segment files. Appends are plain writes; `sync` makes everything
    appended before it durable, sharing one fsync among all callers waiting at the same time."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES,
                 sync_interval: float = SYNC_INTERVAL) -> None:
        self._dir, self._segment_bytes, self._interval = directory, segment_bytes, sync_interval
        self._segments: list[_Segment] = []
        self._fd = self._lock = -1
        self._written = self._synced = 0  # bytes appended / made durable, since opening
        self._last_sync = 0.0
        self._syncing: asyncio.Future[None] | None = None
        self.syncs = 0

    def open(self) -> list[Record]:
        """Every intact record of the existing segments, in order; appends then go to a new segment
        (so a torn tail of the last one never has records written after it)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        # Two processes appending to one log would each replay and truncate the other's records.
        self._lock = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise RuntimeError(f"{self._dir} is the log of another running process") from None
        found: list[Record] = []
        for path in sorted(self._dir.glob("*.wal")):
            segment = _Segment(path, path.stat().st_size)
            for record in _read(path):
                found.append(record)
                segment.marks[record.key] = max(segment.marks.get(record.key, record.position), record.position)
            self._segments.append(segment)
        self._roll()
        return found

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)  # releases the lock
            self._lock = -1

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self._segments)

    def append(self, records: list[tuple[int, Position, bytes]]) -> None:
        if not records:
            return
        # One loop, names bound once: every chat message passes here.
        body, head, crc32 = _BODY.pack, _HEAD.pack, zlib.crc32
        parts: list[bytes] = []
        add = parts.append
        marks = self._segments[-1].marks  # a mark ahead of a failed write only makes truncation wait longer
        for key, (ms, seq), payload in records:
            record = body(key, ms, seq) + payload
            add(head(len(record), crc32(record)))
            add(record)
            if (ms, seq) > marks.get(key, (-1, -1)):
                marks[key] = (ms, seq)
        self._write(b"".join(parts))

    def append_entries(self, key: int, entries: list[tuple[str, bytes]]) -> None:
        """Stream entries of one key, their "<ms>-<seq>" ids as positions: read in the same pass that
        frames the records, as every chat message passes here."""
        if not entries:
            return
        body, head, crc32 = _BODY.pack, _HEAD.pack, zlib.crc32
        parts: list[bytes] = []
        add = parts.append
        top_ms, top_seq = self._segments[-1].marks.get(key, (-1, -1))
        for entry, payload in entries:
            text_ms, _, text_seq = entry.partition("-")
            ms, seq = int(text_ms), int(text_seq)
            record = body(key, ms, seq) + payload
            add(head(len(record), crc32(record)))
            add(record)
            if ms > top_ms or (ms == top_ms and seq > top_seq):
                top_ms, top_seq = ms, seq
        self._segments[-1].marks[key] = (top_ms, top_seq)
        self._write(b"".join(parts))

    def _write(self, data: bytes) -> None:
        os.write(self._fd, data)
        segment = self._segments[-1]
        segment.size += len(data)
        self._written += len(data)
        if segment.size >= self._segment_bytes:
            self._roll()

    async def sync(self) -> None:
        target = self._written
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._flush())
            await asyncio.shield(self._syncing)

    async def _flush(self) -> None:
        try:
            pause = self._last_sync + self._interval - time.monotonic()
            if pause > 0:  # appends arriving meanwhile ride along with this fsync
                await asyncio.sleep(pause)
            # A descriptor of our own: a roll may close the segment's while the fsync runs.
            upto, fd = self._written, os.dup(self._fd)
            self._last_sync = time.monotonic()
            try:
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            self.syncs += 1
            self._synced = max(self._synced, upto)
        finally:
            self._syncing = None

    def truncate(self, done: Callable[[int, Position], bool]) -> int:
        """Deletes every segment but the current one whose records are all done with; returns how many."""
        removed = 0
        for segment in self._segments[:-1]:
            if all(done(key, position) for key, position in segment.marks.items()):
                segment.path.unlink(missing_ok=True)
                removed += 1
        if removed:
            self._segments = [s for s in self._segments[:-1] if s.path.exists()] + self._segments[-1:]
            _sync_dir(self._dir)
        return removed

    def roll(self) -> None:
        """Starts a new segment, so that the records so far can be truncated once done with."""
        if self._segments and self._segments[-1].size:
            self._roll()

    def _roll(self) -> None:
        if self._fd >= 0:
            # Whatever a waiting sync covers must be durable before its file is closed.
            os.fsync(self._fd)
            os.close(self._fd)
            self._synced = self._written
        number = int(self._segments[-1].path.stem) + 1 if self._segments else 1
        path = self._dir / f"{number:012d}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _sync_dir(self._dir)
        self._segments.append(_Segment(path))
