import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Protocol

from strawberry.dataloader import DataLoader
from strawberry.types import Info as _Info

from domain.accounts import AuthDeps, authenticate
from domain.archive import ChatArchive
from domain.chat import ChatDeps, Message
from domain.errors import DomainError, Unauthenticated
from domain.events import UserEvent
from domain.locations import LocationDeps
from domain.model import Principal, User
from domain.nearby import NearbyDeps
from domain.photos import Photo, PhotoDeps
from domain.ports import EventPublisher, PasswordHasher, SessionRepo, TokenSigner, UserRepo
from domain.presence import PresenceBoard, Sighting
from domain.ratelimits import RateLimiter
from domain.swipes import SwipeDeps


class UserEventStream(Protocol):
    def subscribe(self, user_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncIterator[UserEvent]]: ...

    # Calls on_event(None) when events may have been missed; the result stops it.
    async def watch(self, user_id: uuid.UUID, on_event: Callable[[UserEvent | None], None]
                    ) -> Callable[[], Awaitable[None]]: ...


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
    chats: ChatDeps
    photos: PhotoDeps
    presence: PresenceBoard
    clock: Callable[[], datetime] = utcnow
    rate_limiter: RateLimiter | None = None  # read by schema.ratelimit before any resolver
    archive: ChatArchive | None = None  # chat history older than the recent store

    @property
    def auth(self) -> AuthDeps:
        return AuthDeps(self.users, self.sessions, self.hasher, self.tokens, self.events, self.refresh_ttl)


class Loaders:
    # cache=False: batching within one tick is what saves queries; a cache would outlive the
    # request on a WebSocket, whose context lasts as long as the connection. Each is made on first
    # use: most sockets hold a context for hours and load nothing through it.
    def __init__(self, ports: Ports) -> None:
        self._ports = ports

    @cached_property
    def users(self) -> DataLoader[uuid.UUID, User | None]:
        return DataLoader(self._load_users, cache=False)

    @cached_property
    def photos(self) -> DataLoader[tuple[uuid.UUID, uuid.UUID], list[Photo]]:
        # Keyed by (viewer, owner): the photos a viewer may see depend on blocks between the two.
        return DataLoader(self._load_photos, cache=False)

    @cached_property
    def chat_summaries(self) -> DataLoader[tuple[uuid.UUID, uuid.UUID], tuple[Message | None, int]]:
        # Keyed by (chat, viewer): the newest message and the viewer's unread count.
        return DataLoader(self._load_chat_summaries, cache=False)

    @cached_property
    def sightings(self) -> DataLoader[uuid.UUID, Sighting]:
        return DataLoader(self._load_sightings, cache=False)

    async def _load_users(self, ids: list[uuid.UUID]) -> list[User | None]:
        found = await self._ports.users.get_many(list(set(ids)))
        return [found.get(i) for i in ids]

    async def _load_chat_summaries(self, keys: list[tuple[uuid.UUID, uuid.UUID]]
                                   ) -> list[tuple[Message | None, int]]:
        unique = list(set(keys))  # lastMessage and unreadCount of one match ask in the same tick
        found = await asyncio.gather(*(self._ports.chats.log.summary(chat, user) for chat, user in unique))
        by_key = dict(zip(unique, found, strict=True))
        return [by_key[k] for k in keys]

    async def _load_sightings(self, ids: list[uuid.UUID]) -> list[Sighting]:
        found = await self._ports.presence.sightings(list(set(ids)), self._ports.clock())
        return [found[i] for i in ids]

    async def _load_photos(self, keys: list[tuple[uuid.UUID, uuid.UUID]]) -> list[list[Photo]]:
        found: dict[tuple[uuid.UUID, uuid.UUID], list[Photo]] = {}
        for viewer in {v for v, _ in keys}:  # one viewer per request in practice
            owners = list({o for v, o in keys if v == viewer})
            for owner, photos in (await self._ports.photos.photos.visible(viewer, owners)).items():
                found[(viewer, owner)] = photos
        return [found.get(k, []) for k in keys]


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
    _known: bool = False  # the check is over: principal and auth_error say what it found

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.ports)

    async def authenticate(self) -> Principal | None:
        # Lazy, so public fields cost nothing and a bad token fails only the fields that need one;
        # shared, so sibling resolvers running concurrently wait for the one check in flight.
        if not self._known:
            if self._checked is None:
                self._checked = asyncio.ensure_future(self._check())
            await asyncio.shield(self._checked)
            # A finished task keeps its coroutine: on a socket, for as long as the connection lasts.
            self._known, self._checked = True, None
        return self.principal

    async def _check(self) -> None:
        if self.bearer is not None:
            try:
                self.principal = await authenticate(self.ports.auth, self.bearer, self.ports.clock())
            except DomainError as exc:  # also UNAVAILABLE: the check could not be made
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
