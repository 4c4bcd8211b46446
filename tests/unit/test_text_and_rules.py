from datetime import date

import pytest

from domain.accounts import check_birth_date, check_password, display_name, normalise_email
from domain.errors import Code, InputError
from domain.tags import MAX_TAGS, normalise_tags
from domain.text import clean_text


def code_of(fn, *args, **kwargs) -> Code:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as caught:
        fn(*args, **kwargs)
    return caught.value.code


def test_clean_text_normalises_and_bounds() -> None:
    assert clean_text("  Cafe\u0301 ", "f", max_len=10) == "Caf\u00e9"  # NFC, trimmed
    assert clean_text("a\nb\tc", "f", max_len=10, multiline=True) == "a\nb\tc"
    assert clean_text("👩\u200d👩\u200d👧", "f", max_len=10) == "👩\u200d👩\u200d👧"  # joiners are fine
    assert code_of(clean_text, "a\nb", "f", max_len=10) == Code.INVALID_TEXT
    assert code_of(clean_text, "evil\u202etxt", "f", max_len=20) == Code.INVALID_TEXT
    assert code_of(clean_text, "nul\x00", "f", max_len=10) == Code.INVALID_TEXT
    assert code_of(clean_text, "x\ud800", "f", max_len=10) == Code.INVALID_TEXT
    assert code_of(clean_text, "x" * 11, "f", max_len=10) == Code.TEXT_TOO_LONG
    assert code_of(clean_text, "x" * 10_000, "f", max_len=500) == Code.TEXT_TOO_LONG
    assert code_of(clean_text, "   ", "f", max_len=10, min_len=1) == Code.TEXT_TOO_SHORT


@pytest.mark.parametrize("raw", ["plain", "a@b", "a@@b.co", "a b@c.co", "@b.co", "a@.co", "a@b.", "a@b..co",
                                 "x" * 65 + "@b.co", "a@" + "b" * 250 + ".co", ""])
def test_invalid_emails(raw: str) -> None:
    assert code_of(normalise_email, raw) in (Code.INVALID_EMAIL, Code.TEXT_TOO_LONG)


def test_email_is_case_folded() -> None:
    assert normalise_email(" Ann.Lee@Example.COM ") == "ann.lee@example.com"


def test_password_bounds() -> None:
    check_password("x" * 8)
    check_password("x" * 128)
    assert code_of(check_password, "x" * 7) == Code.PASSWORD_TOO_SHORT
    assert code_of(check_password, "x" * 129) == Code.PASSWORD_TOO_LONG
    assert code_of(check_password, "long enough \udfff") == Code.INVALID_TEXT


def test_age_rules() -> None:
    today = date(2026, 3, 1)
    check_birth_date(date(2008, 3, 1), today)  # eighteenth birthday today
    assert code_of(check_birth_date, date(2008, 3, 2), today) == Code.UNDER_AGE
    assert code_of(check_birth_date, date(2027, 1, 1), today) == Code.INVALID_BIRTH_DATE
    assert code_of(check_birth_date, date(1900, 1, 1), today) == Code.INVALID_BIRTH_DATE
    # Born on 29 February: eighteen on 1 March of a common year.
    check_birth_date(date(2008, 2, 29), date(2026, 3, 1))
    assert code_of(check_birth_date, date(2008, 2, 29), date(2026, 2, 28)) == Code.UNDER_AGE


def test_display_name() -> None:
    assert display_name("  Ann  ") == "Ann"
    assert code_of(display_name, "") == Code.TEXT_TOO_SHORT
    assert code_of(display_name, "x" * 51) == Code.TEXT_TOO_LONG


def test_tags_are_normalised_and_bounded() -> None:
    assert normalise_tags(["Board games", "board-games", "HIKING", " hot_pot "]) == ["board-games", "hiking", "hot-pot"]
    assert code_of(normalise_tags, ["hiking", "underwater basket weaving"]) == Code.UNKNOWN_TAG
    many = ["hiking", "climbing", "cycling", "running", "camping", "surfing", "skiing", "sailing", "gardening",
            "fishing", "yoga"]
    assert len(many) == MAX_TAGS + 1
    assert code_of(normalise_tags, many) == Code.TOO_MANY_TAGS
    assert code_of(normalise_tags, ["hiking"] * 1000) == Code.TOO_MANY_TAGS
