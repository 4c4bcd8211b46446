import hashlib
import re
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from domain.errors import AuthError, Code, InputError, Unauthenticated
from domain.events import SessionsEnded
from domain.ids import new_id
from domain.model import MAX_AGE, MIN_AGE, Gender, Principal, Session, Tokens, User, age_on
from domain.ports import EventPublisher, PasswordHasher, SessionRepo, TokenSigner, UserRepo
from domain.text import clean_text, has_lone_surrogate, visible

PASSWORD_MIN = 8
PASSWORD_MAX = 128
DISPLAY_NAME_MAX = 50
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


@dataclass(frozen=True)
class AuthDeps:
    users: UserRepo
    sessions: SessionRepo
    hasher: PasswordHasher
    tokens: TokenSigner
    events: EventPublisher
    refresh_ttl: timedelta


@dataclass(frozen=True)
class SignUp:
    email: str
    password: str
    display_name: str
    birth_date: date
    gender: Gender


def normalise_email(raw: str) -> str:
    email = clean_text(raw, "email", max_len=254).casefold()
    # Invisible characters would make a second account of the same-looking address.
    if not _EMAIL.match(email) or any(unicodedata.category(ch) == "Cf" for ch in email):
        raise InputError(Code.INVALID_EMAIL, "Not a valid email address", "email")
    return email


def check_password(password: str) -> None:
    if has_lone_surrogate(password):
        raise InputError(Code.INVALID_TEXT, "password contains an unpaired UTF-16 surrogate", "password")
    if len(password) < PASSWORD_MIN:
        raise InputError(Code.PASSWORD_TOO_SHORT, f"Password needs at least {PASSWORD_MIN} characters", "password")
    if len(password) > PASSWORD_MAX:
        raise InputError(Code.PASSWORD_TOO_LONG, f"Password is limited to {PASSWORD_MAX} characters", "password")


def check_birth_date(birth: date, today: date) -> None:
    if birth > today or age_on(birth, today) > MAX_AGE:
        raise InputError(Code.INVALID_BIRTH_DATE, "Birth date is not plausible", "birthDate")
    if age_on(birth, today) < MIN_AGE:
        raise InputError(Code.UNDER_AGE, f"You must be {MIN_AGE} or older", "birthDate")


def display_name(raw: str) -> str:
    name = clean_text(raw, "displayName", max_len=DISPLAY_NAME_MAX, min_len=1)
    if not visible(name):
        raise InputError(Code.TEXT_TOO_SHORT, "displayName must show at least one character", "displayName")
    return name


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _refresh_token(session: Session, secret: str) -> str:
    # The ids ride along so the session is found by its key (user first: the shard key).
    return f"{session.user_id.hex}.{session.id.hex}.{secret}"


def _parse_refresh_token(token: str) -> tuple[uuid.UUID, uuid.UUID, str]:
    parts = token.split(".")
    if token.isascii() and len(parts) == 3 and 20 <= len(parts[2]) <= 100:
        user_id, session_id = _uuid_or_none(parts[0]), _uuid_or_none(parts[1])
        if user_id and session_id:
            return user_id, session_id, parts[2]
    raise AuthError(Code.INVALID_REFRESH_TOKEN, "Refresh token is invalid or expired")


def _uuid_or_none(hex_: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(hex=hex_) if len(hex_) == 32 else None
    except ValueError:
        return None


async def _open_session(deps: AuthDeps, user_id: uuid.UUID, now: datetime, client_ip: str | None) -> Tokens:
    secret = secrets.token_urlsafe(32)
    session = Session(new_id(), user_id, _hash_secret(secret), now + deps.refresh_ttl, client_ip)
    await deps.sessions.create(session, now)
    return _tokens(deps, session, secret, now)


def _tokens(deps: AuthDeps, session: Session, secret: str, now: datetime) -> Tokens:
    access, access_exp = deps.tokens.issue(Principal(session.user_id, session.id, session.expires_at), now)
    return Tokens(access, access_exp, _refresh_token(session, secret), session.expires_at)


async def sign_up(
    deps: AuthDeps, cmd: SignUp, now: datetime, client_ip: str | None = None
) -> tuple[User, Tokens]:
    email = normalise_email(cmd.email)
    check_password(cmd.password)
    check_birth_date(cmd.birth_date, now.date())
    user = User(new_id(), email, display_name(cmd.display_name), cmd.birth_date, cmd.gender, now)
    if not await deps.users.create(user, await deps.hasher.hash(cmd.password)):
        raise AuthError(Code.EMAIL_TAKEN, "An account with this email already exists", "email")
    return user, await _open_session(deps, user.id, now, client_ip)


async def log_in(
    deps: AuthDeps, email: str, password: str, now: datetime, client_ip: str | None = None
) -> tuple[User, Tokens]:
    failed = AuthError(Code.INVALID_CREDENTIALS, "Email or password is wrong")
    try:
        key = normalise_email(email)
        check_password(password)
    except InputError:
        raise failed from None
    found = await deps.users.by_email(key)
    if found is None:
        await deps.hasher.verify_nothing(password)  # an unknown email costs as much as a wrong password
        raise failed
    user, stored = found
    if not await deps.hasher.verify(stored, password):
        raise failed
    if deps.hasher.needs_rehash(stored):
        await deps.users.set_password_hash(user.id, await deps.hasher.hash(password))
    return user, await _open_session(deps, user.id, now, client_ip)


async def refresh(deps: AuthDeps, token: str, now: datetime) -> tuple[User, Tokens]:
    invalid = AuthError(Code.INVALID_REFRESH_TOKEN, "Refresh token is invalid or expired")
    user_id, session_id, secret = _parse_refresh_token(token)
    old_hash, new_secret = _hash_secret(secret), secrets.token_urlsafe(32)
    expires = now + deps.refresh_ttl
    if not await deps.sessions.rotate(user_id, session_id, old_hash, _hash_secret(new_secret), expires, now):
        # An already rotated token coming back means two parties hold it: end the session.
        if await deps.sessions.was_rotated_from(user_id, session_id, old_hash):
            await end_sessions(deps, user_id, session_id, now, "refresh token reused")
        raise invalid
    user = await deps.users.get(user_id)
    if user is None:
        raise invalid
    session = Session(session_id, user_id, _hash_secret(new_secret), expires)
    return user, _tokens(deps, session, new_secret, now)


async def end_sessions(
    deps: AuthDeps, user_id: uuid.UUID, session_id: uuid.UUID | None, now: datetime, reason: str
) -> None:
    await deps.sessions.revoke(user_id, session_id, now)
    await deps.events.publish(SessionsEnded(user_id, None if session_id is None else (session_id,), reason))


async def authenticate(deps: AuthDeps, access_token: str, now: datetime) -> Principal:
    principal = deps.tokens.verify(access_token, now)
    if not await deps.sessions.is_active(principal.user_id, principal.session_id, now):
        raise Unauthenticated("Session has ended", "SESSION_ENDED")
    return principal


async def delete_account(deps: AuthDeps, principal: Principal, password: str, now: datetime) -> None:
    wrong = AuthError(Code.INVALID_CREDENTIALS, "Password is wrong", "password")
    try:
        check_password(password)
    except InputError:
        raise wrong from None
    stored = await deps.users.password_hash(principal.user_id)
    if stored is None or not await deps.hasher.verify(stored, password):
        raise wrong
    await deps.users.delete(principal.user_id, now)
    await end_sessions(deps, principal.user_id, None, now, "account deleted")

