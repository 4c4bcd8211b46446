import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from strawberry.dataloader import DataLoader
from strawberry.types import Info as _Info

from domain.accounts import AuthDeps, authenticate
from domain.errors import DomainError, Unauthenticated
from domain.events import UserEvent
from domain.locations import LocationDeps
from domain.model import Principal, User
from domain.nearby import NearbyDeps
from domain.ports import EventPublisher, PasswordHasher, SessionRepo, TokenSigner, UserRepo
from domain.swipes import SwipeDeps


class UserEventStream(Protocol):
    def subscribe(self, user_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncIterator[UserEvent]]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ports:
    """Everything resolvers may use, wired once by the composition root."""

    users: UserRepo
    sessions: SessionRepo
    hasher: PasswordHasher
    tokens: TokenSigner
    events: EventPublisher
    user_events: UserEventStream
    refresh_ttl: timedelta
    swipes: SwipeDeps
    cursor_key: bytes
    places: LocationDeps
    nearby: NearbyDeps
    clock: Callable[[], datetime] = utcnow

    @property
    def auth(self) -> AuthDeps:
        return AuthDeps(self.users, self.sessions, self.hasher, self.tokens, self.events, self.refresh_ttl)


class Loaders:
    # cache=False: batching within one tick is what saves queries; a cache would outlive the
    # request on a WebSocket, whose context lasts as long as the connection.
    def __init__(self, ports: Ports) -> None:
        self.users = DataLoader[uuid.UUID, User | None](self._load_users, cache=False)
        self._ports = ports

    async def _load_users(self, ids: list[uuid.UUID]) -> list[User | None]:
        found = await self._ports.users.get_many(list(set(ids)))
        return [found.get(i) for i in ids]


@dataclass
class Context:
    ports: Ports
    client_ip: str
    request_id: str
    bearer: str | None = None
    # The transport's request or WebSocket, opaque to resolvers.
    transport: Any = None
    over_websocket: bool = False  # subscriptions need one
    loaders: Loaders = field(init=False)
    # Filled by strawberry from a WebSocket connection_init payload.
    connection_params: dict[str, Any] | None = None
    principal: Principal | None = None
    auth_error: DomainError | None = None
    _checked: "asyncio.Future[None] | None" = None

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.ports)

    async def authenticate(self) -> Principal | None:
        # Lazy, so public fields cost nothing and a bad token fails only the fields that need one;
        # shared, so sibling resolvers running concurrently wait for the one check in flight.
        if self._checked is None:
            self._checked = asyncio.ensure_future(self._check())
        await asyncio.shield(self._checked)
        return self.principal

    async def _check(self) -> None:
        if self.bearer is not None:
            try:
                self.principal = await authenticate(self.ports.auth, self.bearer, self.ports.clock())
            except Unauthenticated as exc:
                self.auth_error = exc

    async def require_user(self) -> Principal:
        principal = await self.authenticate()
        if principal is None:
            raise self.auth_error or Unauthenticated()
        return principal


Info = _Info[Context, None]


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    # A malformed header still counts as "a token was sent", so it fails loudly instead of
    # silently acting as an anonymous request.
    return token.strip() if scheme.lower() == "bearer" and token.strip() else header
