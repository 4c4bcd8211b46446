import strawberry

from domain import accounts, locations, photos, ratelimits, swipes
from domain.errors import Code, DomainError, LimitReached, NotFound
from domain.ids import parse_id
from domain.model import Tokens, User
from domain.tags import CATALOGUE
from resolvers.context import Info
from schema.accounts import (
    AuthPayloadGQL,
    AuthResult,
    DeleteAccountResult,
    DoneGQL,
    InterestTagGQL,
    MeGQL,
    PersonGQL,
    SignUpInput,
)
from schema.errors import error_member


def _payload(info: Info, user: User, tokens: Tokens) -> AuthPayloadGQL:
    return AuthPayloadGQL(
        access_token=tokens.access_token, access_token_expires_at=tokens.access_expires_at,
        refresh_token=tokens.refresh_token, refresh_token_expires_at=tokens.refresh_expires_at,
        me=MeGQL.from_domain(user, info.context.ports.clock().date()),
    )


async def sign_up(info: Info, input: SignUpInput) -> AuthResult:
    ports = info.context.ports
    cmd = accounts.SignUp(input.email, input.password, input.display_name, input.birth_date, input.gender)
    try:
        user, tokens = await accounts.sign_up(ports.auth, cmd, ports.clock(), info.context.client_ip)
    except DomainError as exc:
        return error_member(exc)
    await locations.update_from_ip(ports.places, user.id, info.context.client_ip, ports.clock())
    return _payload(info, user, tokens)


async def log_in(info: Info, email: str, password: str) -> AuthResult:
    ports = info.context.ports
    try:
        await _count_attempt(info, email)
        user, tokens = await accounts.log_in(ports.auth, email, password, ports.clock(), info.context.client_ip)
    except DomainError as exc:
        return error_member(exc)
    await locations.update_from_ip(ports.places, user.id, info.context.client_ip, ports.clock())
    return _payload(info, user, tokens)


async def _count_attempt(info: Info, email: str) -> None:
    limiter = info.context.ports.rate_limiter
    try:
        key = accounts.normalise_email(email)
    except DomainError:
        return  # refused as wrong credentials without any password check
    if limiter is not None and (wait := await limiter.take(ratelimits.account_log_in_check(key, limiter.scale))):
        raise LimitReached(Code.RATE_LIMITED, "Too many log-in attempts for this account", wait)


async def refresh_token(info: Info, refresh_token: str) -> AuthResult:
    ports = info.context.ports
    try:
        user, tokens = await accounts.refresh(ports.auth, refresh_token, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    await locations.update_from_ip(ports.places, user.id, info.context.client_ip, ports.clock())
    return _payload(info, user, tokens)


async def log_out(info: Info) -> bool:
    principal = await info.context.require_user()
    ports = info.context.ports
    await accounts.end_sessions(ports.auth, principal.user_id, principal.session_id, ports.clock(), "logged out")
    return True


async def log_out_everywhere(info: Info) -> bool:
    principal = await info.context.require_user()
    ports = info.context.ports
    await accounts.end_sessions(ports.auth, principal.user_id, None, ports.clock(), "logged out everywhere")
    return True


async def delete_account(info: Info, password: str) -> DeleteAccountResult:
    principal = await info.context.require_user()
    ports = info.context.ports
    try:
        await accounts.delete_account(ports.auth, principal, password, ports.clock())
    except DomainError as exc:
        return error_member(exc)
    await swipes.account_deleted(ports.swipes, principal.user_id, ports.clock())
    await photos.account_deleted(ports.photos, principal.user_id, ports.clock())
    return DoneGQL()


async def me(info: Info) -> MeGQL:
    principal = await info.context.require_user()
    user = await info.context.loaders.users.load(principal.user_id)
    if user is None:
        raise NotFound("Account")
    return MeGQL.from_domain(user, info.context.ports.clock().date())


async def person(info: Info, id: strawberry.ID) -> PersonGQL | None:
    principal = await info.context.require_user()
    user_id = parse_id(id)
    user = None if user_id is None else await info.context.loaders.users.load(user_id)
    if user is None or await info.context.ports.swipes.relations.blocked_either_way(principal.user_id, user.id):
        raise NotFound("Person")
    return PersonGQL.from_domain(user, info.context.ports.clock().date())


def interest_tags() -> list[InterestTagGQL]:
    return [InterestTagGQL.from_domain(tag) for tag in CATALOGUE]
