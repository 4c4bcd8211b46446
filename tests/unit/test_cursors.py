import pytest

from domain.cursors import cursors_along, decode_cursor, encode_cursor, page_size
from domain.errors import Code, InputError

KEY = b"k" * 32


def test_round_trip_and_forgery() -> None:
    cursor = encode_cursor(KEY, "matches", [1700000000000, "abc"])
    assert decode_cursor(KEY, "matches", cursor) == [1700000000000, "abc"]
    for bad in (cursor[:-2], cursor + "x", "", "!!!", encode_cursor(b"x" * 32, "matches", [1, "abc"]),
                encode_cursor(KEY, "other-list", [1, "abc"]), "A" * 5000, "\ud800"):
        with pytest.raises(InputError) as refused:
            decode_cursor(KEY, "matches", bad)
        assert refused.value.code == Code.INVALID_CURSOR


def test_page_size_bounds() -> None:
    assert page_size(None) == 20 and page_size(100) == 100
    for bad in (0, -1, 101, 2**40):
        with pytest.raises(InputError):
            page_size(bad)


def test_cursors_along_one_list_are_those_encode_cursor_makes() -> None:
    along = cursors_along(KEY, "nearby", ["0f" * 16])
    for last in (0, 1, 20, 123456789, "x"):
        assert along(last) == encode_cursor(KEY, "nearby", ["0f" * 16, last])
        assert decode_cursor(KEY, "nearby", along(last)) == ["0f" * 16, last]
    assert cursors_along(KEY, "k", [])(7) == encode_cursor(KEY, "k", [7])
