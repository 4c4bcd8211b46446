"""The stored layout of a ranked list: what a later page reads back is what the first page ranked."""
import random
import uuid

import pytest

from domain.ranking import Ranked
from domain.tags import CATALOGUE
from infra.buckets import _HEAD, _RECORD, decode_list, encode_list

VIEWER_TAGS = tuple(t.slug for t in CATALOGUE[-10:])  # the catalogue's end: indices above one byte's worth too


def entries(n: int, seed: int = 7) -> list[Ranked]:
    rng = random.Random(seed)
    return [Ranked(uuid.UUID(int=rng.getrandbits(128), version=4), rng.randrange(10),
                   tuple(t for t in VIEWER_TAGS if rng.random() < 0.3), rng.random() < 0.5, rng.random() < 0.1, 0.0)
            for _ in range(n)]


def read(blob: bytes, start: int, count: int) -> tuple[list[Ranked], int] | None:
    """As a GETRANGE of the header and of the records from `start` would return them."""
    first = _HEAD + start * _RECORD
    return decode_list(blob[:_HEAD], blob[first:first + count * _RECORD])


def test_every_slice_reads_back_as_ranked() -> None:
    ranked = entries(500)
    blob = encode_list(ranked)
    for start, count in ((0, 40), (37, 40), (480, 40), (499, 1), (500, 40), (900, 40)):
        assert read(blob, start, count) == (ranked[start:start + count], 500)


def test_an_empty_list_still_exists() -> None:
    assert read(encode_list([]), 0, 40) == ([], 0)


def test_what_is_not_a_list_of_this_layout_reads_as_none() -> None:
    blob = encode_list(entries(3))
    assert read(b"", 0, 40) is None  # no such key
    assert read(b"v1" + blob[2:], 0, 40) is None  # another layout under the same name


def test_shared_tags_beyond_a_viewers_worth_are_refused() -> None:
    tags = tuple(t.slug for t in CATALOGUE[:17])
    with pytest.raises(ValueError):
        encode_list([Ranked(uuid.uuid4(), 0, tags, False, False, 0.0)])
