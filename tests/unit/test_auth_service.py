from datetime import UTC, date, datetime, timedelta

import pytest

from domain import accounts
from domain.errors import AuthError, Code, InputError, Unauthenticated
from domain.events import ProfileChanged, SessionsEnded
from domain.model import Gender, Visibility
from domain.profiles import ProfileChanges, update_profile
from tests.unit.fakes import FakeSessions, FakeUsers, PlainHasher, PlainTokens, RecordedEvents

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
def deps() -> accounts.AuthDeps:
    return accounts.AuthDeps(FakeUsers(), FakeSessions(), PlainHasher(), PlainTokens(), RecordedEvents(),
                             timedelta(days=30))


def signup(email: str = "ann@example.com") -> accounts.SignUp:
    return accounts.SignUp(email, "password123", "Ann", date(1990, 1, 1), Gender.WOMAN)


async def test_sign_up_then_log_in(deps: accounts.AuthDeps) -> None:
    user, tokens = await accounts.sign_up(deps, signup("Ann@Example.com"), NOW)
    assert user.email == "ann@example.com" and tokens.refresh_expires_at == NOW + timedelta(days=30)
    again, _ = await accounts.log_in(deps, "ANN@example.com", "password123", NOW)
    assert again.id == user.id
    with pytest.raises(AuthError) as taken:
        await accounts.sign_up(deps, signup("ann@EXAMPLE.com"), NOW)
    assert taken.value.code == Code.EMAIL_TAKEN
    for email, password in (("ann@example.com", "wrong password"), ("bob@example.com", "password123"),
                            ("not an email", "password123"), ("ann@example.com", "short")):
        with pytest.raises(AuthError) as wrong:
            await accounts.log_in(deps, email, password, NOW)
        assert wrong.value.code == Code.INVALID_CREDENTIALS


async def test_under_age_sign_up_is_refused(deps: accounts.AuthDeps) -> None:
    cmd = accounts.SignUp("kid@example.com", "password123", "Kid", date(2010, 1, 1), Gender.MAN)
    with pytest.raises(InputError) as refused:
        await accounts.sign_up(deps, cmd, NOW)
    assert refused.value.code == Code.UNDER_AGE
    assert await deps.users.by_email("kid@example.com") is None


async def test_refresh_rotation_and_reuse_detection(deps: accounts.AuthDeps) -> None:
    user, tokens = await accounts.sign_up(deps, signup(), NOW)
    _, rotated = await accounts.refresh(deps, tokens.refresh_token, NOW + timedelta(days=1))
    assert rotated.refresh_token != tokens.refresh_token
    assert rotated.refresh_expires_at == NOW + timedelta(days=31)
    with pytest.raises(AuthError):
        await accounts.refresh(deps, tokens.refresh_token, NOW + timedelta(days=2))
    # Reuse of the old token ended the session: the current token is dead too, and sockets hear it.
    with pytest.raises(AuthError):
        await accounts.refresh(deps, rotated.refresh_token, NOW + timedelta(days=2))
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(deps, rotated.access_token, NOW)
    events = deps.events.events  # type: ignore[attr-defined]
    assert isinstance(events[-1], SessionsEnded) and events[-1].user_id == user.id


async def test_expired_session_cannot_refresh(deps: accounts.AuthDeps) -> None:
    _, tokens = await accounts.sign_up(deps, signup(), NOW)
    with pytest.raises(AuthError):
        await accounts.refresh(deps, tokens.refresh_token, NOW + timedelta(days=31))


async def test_log_out_everywhere_and_delete(deps: accounts.AuthDeps) -> None:
    user, first = await accounts.sign_up(deps, signup(), NOW)
    _, second = await accounts.log_in(deps, "ann@example.com", "password123", NOW)
    principal = await accounts.authenticate(deps, first.access_token, NOW)
    await accounts.end_sessions(deps, user.id, principal.session_id, NOW, "logged out")
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(deps, first.access_token, NOW)
    still = await accounts.authenticate(deps, second.access_token, NOW)
    with pytest.raises(AuthError):
        await accounts.delete_account(deps, still, "wrong password", NOW)
    await accounts.delete_account(deps, still, "password123", NOW)
    assert await deps.users.get(user.id) is None
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(deps, second.access_token, NOW)
    ended = deps.events.events[-1]  # type: ignore[attr-defined]
    assert isinstance(ended, SessionsEnded) and ended.session_ids is None and ended.covers(still.session_id)


async def test_profile_update_validates_everything_before_saving(deps: accounts.AuthDeps) -> None:
    user, _ = await accounts.sign_up(deps, signup(), NOW)
    events = RecordedEvents()
    updated = await update_profile(deps.users, events, user.id, ProfileChanges(
        bio="Hi!\nI like hiking.", interest_tags=["Hiking", "Coffee"], show_me=[Gender.MAN],
        age_min=25, age_max=40, max_distance_km=10, visibility=Visibility.HIDDEN), NOW)
    assert updated.interest_tags == ("hiking", "coffee") and updated.discovery.age_min == 25
    assert events.events == [ProfileChanged(user.id)]
    for bad, code in ((ProfileChanges(bio="x", age_min=50), Code.INVALID_AGE_RANGE),
                      (ProfileChanges(bio="y", max_distance_km=0), Code.INVALID_DISTANCE),
                      (ProfileChanges(bio="z", show_me=[]), Code.INVALID_INPUT),
                      (ProfileChanges(bio="w" * 501), Code.TEXT_TOO_LONG)):
        with pytest.raises(InputError) as refused:
            await update_profile(deps.users, events, user.id, bad, NOW)
        assert refused.value.code == code
    assert await deps.users.get(user.id) == updated  # nothing half-applied
    await update_profile(deps.users, events, user.id, ProfileChanges(bio=updated.bio), NOW)
    assert len(events.events) == 1  # no change, no event
