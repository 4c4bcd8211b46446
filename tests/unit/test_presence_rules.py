from datetime import UTC, datetime, timedelta

from domain.presence import Presence, Sighting, presence_of

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_presence_is_told_in_bands_only() -> None:
    cases = [
        (Sighting(True, NOW - timedelta(days=30)), Presence.ONLINE),  # a live connection outranks the rest
        (Sighting(False, NOW - timedelta(minutes=1)), Presence.TODAY),
        (Sighting(False, NOW - timedelta(hours=24)), Presence.TODAY),
        (Sighting(False, NOW - timedelta(hours=25)), Presence.THIS_WEEK),
        (Sighting(False, NOW - timedelta(days=7)), Presence.THIS_WEEK),
        (Sighting(False, NOW - timedelta(days=7, seconds=1)), Presence.LONGER),
        (Sighting(False, None), Presence.LONGER),
    ]
    assert [presence_of(s, NOW) for s, _ in cases] == [p for _, p in cases]
