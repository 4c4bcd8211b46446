import os
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from functools import lru_cache

import redis.asyncio as aioredis
from asyncpg.pgproto.pgproto import UUID as FastUUID

from domain.geo import index_of
from domain.model import Gender
from domain.ranking import Listing, Ranked
from domain.tags import CATALOGUE

# Buckets are hashes, one per geohash cell as in the design's location_<geohash> sets, each field a
# user id (16 raw bytes) and its value the short record discovery filters and ranks on. Reading a
# radius is then one HGETALL per cell and no lookup per person; each cell is its own key (its own
# cluster slot), and adding or removing a person touches one key at a time. Chosen over Redis GEO:
# positions are snapped cells anyway, and a GEO set keeps no record beside the member, so filtering
# and ranking would need a second lookup per person. Measured by bench/nearby.py on 1,000,000
# people (2,020 listings read for a 10 km radius in Paris): reading the buckets costs 0.36 ms while
# their versions are unchanged and 1.5 ms when they must be fetched again, against 1.8 ms for a bare
# GEOSEARCH WITHDIST of the same people; about 95 bytes of Redis per person.
_GENDER = {Gender.WOMAN: "W", Gender.MAN: "M", Gender.NONBINARY: "N"}
_BY_LETTER = {v: k for k, v in _GENDER.items()}
# Records store tags by their position in the catalogue: the catalogue only ever grows at the end.
_TAG_INDEX = {tag.slug: i for i, tag in enumerate(CATALOGUE)}


def encode_listing(listing: Listing) -> str:
    tags = ",".join(str(_TAG_INDEX[t]) for t in listing.tags if t in _TAG_INDEX)
    active = listing.active_on.strftime("%Y%m%d") if listing.active_on else ""
    show_me = "".join(sorted(_GENDER[g] for g in listing.show_me))
    return (f"{listing.cell}|{_GENDER[listing.gender]}|{listing.birth_date:%Y%m%d}|{show_me}|{listing.age_min}|"
            f"{listing.age_max}|{listing.max_distance_km}|{tags}|{active}")


# The parts of a record that many people share (days, gender sets, tag lists) are decoded once and
# shared: they are immutable.
@lru_cache(maxsize=1 << 15)
def _day(raw: str) -> date:
    return date(int(raw[:4]), int(raw[4:6]), int(raw[6:8]))


@lru_cache(maxsize=64)
def _genders(letters: str) -> frozenset[Gender]:
    return frozenset(_BY_LETTER[g] for g in letters)


@lru_cache(maxsize=1 << 14)
def _tags(raw: str) -> tuple[str, ...]:
    return tuple(CATALOGUE[int(i)].slug for i in raw.split(",")) if raw else ()


# Ids decode to asyncpg's own uuid.UUID subclass (as in decode_list): built, hashed and printed in
# C, where a first list hashes thousands and a page hands them on to PostgreSQL and Redis.
def decode_listing(user: bytes, raw: bytes) -> Listing:
    cell, gender, birth, show_me, age_min, age_max, distance, tags, active = raw.decode().split("|")
    return Listing(
        FastUUID(user), cell, _BY_LETTER[gender], _day(birth), _genders(show_me),
        int(age_min), int(age_max), int(distance), _tags(tags), _day(active) if active else None,
    )


# A dense city's buckets are read for every new list there, and change far less often than that. So
# every write to a bucket ends by giving it a new random version, and a reader keeps what it decoded
# with the version it saw first: the next reader asks for versions only, and reads again just the
# buckets whose version moved. The version is read before the records, and written after them, so
# kept records are never older than their version says. Versions live in one hash per index cell (a
# radius spans a few: a few commands, each on one key). Nothing is kept longer than KEPT_FOR seconds:
# that bounds what a writer predating versions (during a rolling deploy) could leave unseen, and on a
# cluster, where a pipeline's commands to different slots are not ordered, a version landing before
# its records. Either way no staler than the ranked lists, which are kept for hours.
KEPT_LISTINGS = 50_000  # per process, about 0.7 KB each
KEPT_FOR = 30.0


class RedisBuckets:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, kept_listings: int = KEPT_LISTINGS,
                 kept_for: float = KEPT_FOR) -> None:
        self._redis = redis
        self._prefix = prefix
        self._kept_listings = kept_listings
        self._kept_for = kept_for
        self._kept: dict[str, tuple[bytes, float, list[Listing]]] = {}  # cell: version, read at, listings
        self._kept_count = 0

    def bucket_key(self, bucket: str) -> str:
        return f"{self._prefix}{{loc:{bucket}}}"

    def versions_key(self, index_cell: str) -> str:
        return f"{self._prefix}{{locv:{index_cell}}}"

    def index_key(self, index_cell: str) -> str:
        return f"{self._prefix}{{loci:{index_cell}}}"

    async def listings(self, cells: Sequence[str]) -> list[Listing]:
        groups: dict[str, list[str]] = {}
        for cell in cells:
            groups.setdefault(index_of(cell), []).append(cell)
        async with self._redis.pipeline(transaction=False) as pipe:
            for index_cell, members in groups.items():
                pipe.hmget(self.versions_key(index_cell), members)
            replies = await pipe.execute()
        version_of = {cell: v for members, found in zip(groups.values(), replies, strict=True)
                      for cell, v in zip(members, found, strict=True)}
        versions = [version_of[cell] for cell in cells]
        now = time.monotonic()
        by_cell: dict[str, list[Listing]] = {}
        to_read: list[tuple[str, bytes | None]] = []
        for cell, version in zip(cells, versions, strict=True):
            kept = self._kept.get(cell)
            if version is not None and kept is not None and kept[0] == version and now - kept[1] <= self._kept_for:
                by_cell[cell] = kept[2]
            else:
                to_read.append((cell, version))
        if to_read:
            async with self._redis.pipeline(transaction=False) as pipe:
                for cell, _ in to_read:
                    pipe.hgetall(self.bucket_key(cell))
                replies = await pipe.execute()
            for (cell, version), reply in zip(to_read, replies, strict=True):
                by_cell[cell] = found = [decode_listing(user, raw) for user, raw in reply.items()]
                if version is not None:  # no version: written before versions, or not at all
                    self._keep(cell, version, now, found)
        return [listing for cell in cells for listing in by_cell[cell]]

    def _keep(self, cell: str, version: bytes, now: float, found: list[Listing]) -> None:
        earlier = self._kept.pop(cell, None)
        if earlier is not None:
            self._kept_count -= len(earlier[2])
        self._kept[cell] = (version, now, found)
        self._kept_count += len(found)
        while self._kept_count > self._kept_listings and self._kept:
            oldest = next(iter(self._kept))  # dicts keep insertion order: the longest kept goes first
            self._kept_count -= len(self._kept.pop(oldest)[2])

    async def listed_children(self, index_cells: Sequence[str]) -> list[str]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for cell in index_cells:
                pipe.smembers(self.index_key(cell))
            replies = await pipe.execute()
        return [member.decode() for reply in replies for member in reply]

    async def apply(self, listed: Sequence[tuple[str, Listing]], unlisted: Sequence[tuple[str, uuid.UUID]]) -> None:
        """Lists people in their buckets and takes them out of others; every command touches one key.

        Additions go first: someone moving is briefly in two cells, never in none. Replaying the
        same call changes no listing (only the versions of the buckets it touches)."""
        touched: dict[str, None] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket, listing in listed:
                pipe.hset(self.bucket_key(bucket), listing.user_id.bytes, encode_listing(listing))
                # The index only grows: a stale entry costs one empty read, a missing one hides people.
                pipe.sadd(self.index_key(index_of(bucket)), bucket)
                touched[bucket] = None
            for bucket, user_id in unlisted:
                pipe.hdel(self.bucket_key(bucket), user_id.bytes)
                touched[bucket] = None
            # Last, after every change to the bucket (one connection runs them in order).
            version = os.urandom(8)
            by_index: dict[str, list[str | bytes]] = {}
            for bucket in touched:
                by_index.setdefault(index_of(bucket), []).extend((bucket, version))
            for index_cell, fields in by_index.items():
                pipe.hset(self.versions_key(index_cell), items=fields)
            await pipe.execute()


# A ranked list is one string: a fixed header, then one fixed-size record per person. Saving
# thousands of people is one SET of one value (packing an RPUSH argument per person cost a first page
# more CPU than Redis spent storing them), and a page is one GETRANGE at an offset known from its
# position, in the same round trip as the header that says how long the list is.
# Header: magic, number of records, then the list's vocabulary: every tag shared with anyone on it, by
# catalogue position. Shared tags are always some of the viewer's own (at most MAX_TAGS), so a record
# names its shared tags as a 16-bit mask over that vocabulary.
# Record: id (16 bytes), band, flags (1: active recently, 2: super liked the viewer), mask (2 bytes).
_MAGIC = b"NL1"
_HEAD = 64
_VOCABULARY = 16
_RECORD = 20
_COUNT = struct.Struct(">3sIB")


def encode_list(entries: Sequence[Ranked]) -> bytes:
    vocabulary = sorted({t for shared in {e.shared_tags for e in entries} for t in shared if t in _TAG_INDEX},
                        key=_TAG_INDEX.__getitem__)
    if len(vocabulary) > _VOCABULARY:
        raise ValueError(f"a list names at most {_VOCABULARY} shared tags, not {len(vocabulary)}")
    bit = {tag: 1 << i for i, tag in enumerate(vocabulary)}
    head = _COUNT.pack(_MAGIC, len(entries), len(vocabulary)) + b"".join(
        _TAG_INDEX[t].to_bytes(2, "big") for t in vocabulary)
    records = [head.ljust(_HEAD, b"\0")]
    tails: dict[tuple[int, tuple[str, ...], bool, bool], bytes] = {}  # far fewer than the people
    for e in entries:
        key = (e.band, e.shared_tags, e.active_recently, e.super_like)
        tail = tails.get(key)
        if tail is None:
            mask = sum(bit.get(t, 0) for t in e.shared_tags)
            tail = tails[key] = bytes((e.band, e.active_recently | e.super_like << 1)) + mask.to_bytes(2, "big")
        records.append(e.user_id.int.to_bytes(16, "big") + tail)  # what UUID.bytes does, without its call
    return b"".join(records)


def decode_list(head: bytes, body: bytes) -> tuple[list[Ranked], int] | None:
    """The records in `body` and the length of the whole list; None: not a list of this layout."""
    if len(head) < _HEAD or not head.startswith(_MAGIC):
        return None
    _, total, size = _COUNT.unpack_from(head)
    start = _COUNT.size
    vocabulary = [CATALOGUE[int.from_bytes(head[i:i + 2], "big")].slug for i in range(start, start + 2 * size, 2)]
    tails: dict[bytes, tuple[int, tuple[str, ...], bool, bool]] = {}
    found = []
    for at in range(0, len(body) - _RECORD + 1, _RECORD):
        raw = body[at + 16:at + _RECORD]
        tail = tails.get(raw)
        if tail is None:
            mask = int.from_bytes(raw[2:], "big")
            shared = tuple(tag for i, tag in enumerate(vocabulary) if mask >> i & 1)
            tail = tails[raw] = (raw[0], shared, bool(raw[1] & 1), bool(raw[1] & 2))
        found.append(Ranked(FastUUID(body[at:at + 16]), *tail, 0.0))
    return found, total


# A list never changes once saved, so the process that saved it also keeps it, and serves the later
# pages it is asked for from memory: a client pages on over the connection it has (one process), and
# such a page then waits only on the checks of who is left out. Kept no longer than Redis keeps the
# list (the deadline is taken before the SET), within a byte budget, the least recently read going
# first; any other process, or a list pushed out, reads Redis as before.
KEPT_LIST_BYTES = 32 << 20  # per process: some 500 lists of a dense city (about 60 KB each)


class RedisCandidateLists:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, kept_bytes: int = KEPT_LIST_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._prefix = prefix
        self._kept: OrderedDict[tuple[uuid.UUID, str], tuple[float, bytes]] = OrderedDict()  # deadline, list
        self._kept_bytes = 0
        self._budget = kept_bytes
        self._clock = clock

    def _key(self, viewer: uuid.UUID, list_id: str) -> str:
        # The viewer's hash tag: their lists live beside their other keys, and nobody else's cursor
        # names one of them.
        return f"{self._prefix}{{u:{viewer}}}:nearby:v2:{list_id}"

    async def save(self, viewer: uuid.UUID, list_id: str, entries: Sequence[Ranked], ttl: timedelta) -> None:
        blob = encode_list(entries)
        deadline = self._clock() + ttl.total_seconds()
        await self._redis.set(self._key(viewer, list_id), blob, px=int(ttl.total_seconds() * 1000))
        self._keep((viewer, list_id), deadline, blob)

    def _keep(self, key: tuple[uuid.UUID, str], deadline: float, blob: bytes) -> None:
        earlier = self._kept.pop(key, None)
        if earlier is not None:
            self._kept_bytes -= len(earlier[1])
        if len(blob) > self._budget:
            return
        self._kept[key] = (deadline, blob)
        self._kept_bytes += len(blob)
        while self._kept_bytes > self._budget:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)

    def _kept_list(self, key: tuple[uuid.UUID, str]) -> bytes | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        if kept[0] <= self._clock():
            del self._kept[key]
            self._kept_bytes -= len(kept[1])
            return None
        self._kept.move_to_end(key)
        return kept[1]

    async def read(self, viewer: uuid.UUID, list_id: str, start: int, count: int
                   ) -> tuple[list[Ranked], int] | None:
        first = _HEAD + start * _RECORD
        blob = self._kept_list((viewer, list_id))
        if blob is not None:
            return decode_list(blob[:_HEAD], blob[first:first + count * _RECORD])
        key = self._key(viewer, list_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.getrange(key, 0, _HEAD - 1)
            pipe.getrange(key, first, first + count * _RECORD - 1)
            head, body = await pipe.execute()
        return decode_list(head, body)
