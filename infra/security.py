import asyncio
import uuid
from datetime import UTC, datetime

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import Unauthenticated
from domain.model import Principal


class Argon2Hasher:
    def __init__(self, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._dummy = self._hasher.hash("not a real password")

    # Hashing costs tens of milliseconds of CPU by design, so it runs off the event loop.
    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._verify, password_hash, password)

    async def verify_nothing(self, password: str) -> None:
        await self.verify(self._dummy, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return False


# Verified access tokens kept per process (some 7 MB): more than the people one process serves at once.
KEPT_TOKENS = 10_000


class JwtSigner:
    ALGORITHM = "HS256"

    def __init__(self, secret: str, ttl_seconds: float, issuer: str = "newfriends",
                 kept_tokens: int = KEPT_TOKENS) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._issuer = issuer
        # Checking a signature and its claims costs about 0.1 ms, on every request; its answer for
        # a given token never changes (only expiry does, and that is compared every time below).
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._kept_tokens = kept_tokens

    def issue(self, principal: Principal, now: datetime) -> tuple[str, datetime]:
        expires = min(datetime.fromtimestamp(now.timestamp() + self._ttl, UTC), principal.session_expires_at)
        claims = {
            "iss": self._issuer, "typ": "access", "sub": str(principal.user_id), "sid": str(principal.session_id),
            "sxp": int(principal.session_expires_at.timestamp()), "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM), expires

    def verify(self, token: str, now: datetime) -> Principal:
        known = self._verified.get(token)
        if known is None:
            known = self._verify(token)
            if len(self._verified) >= self._kept_tokens:
                del self._verified[next(iter(self._verified))]  # insertion order: the oldest goes first
            self._verified[token] = known
        principal, expires = known
        # Expiry is checked against the caller's clock, not the library's, so tests can move time.
        if expires <= now.timestamp():
            raise Unauthenticated("Access token has expired", "TOKEN_EXPIRED")
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[self.ALGORITHM], issuer=self._issuer,
                options={"require": ["exp", "sub", "sid", "sxp"], "verify_exp": False},
            )
            if claims.get("typ") != "access":
                raise jwt.InvalidTokenError("not an access token")
            principal = Principal(
                uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]), datetime.fromtimestamp(claims["sxp"], UTC)
            )
            expires = float(claims["exp"])
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            raise Unauthenticated("Access token is invalid", "TOKEN_INVALID") from None
        return principal, expires
