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


class JwtSigner:
    ALGORITHM = "HS256"

    def __init__(self, secret: str, ttl_seconds: float, issuer: str = "newfriends") -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._issuer = issuer

    def issue(self, principal: Principal, now: datetime) -> tuple[str, datetime]:
        expires = min(datetime.fromtimestamp(now.timestamp() + self._ttl, UTC), principal.session_expires_at)
        claims = {
            "iss": self._issuer, "typ": "access", "sub": str(principal.user_id), "sid": str(principal.session_id),
            "sxp": int(principal.session_expires_at.timestamp()), "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM), expires

    def verify(self, token: str, now: datetime) -> Principal:
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
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            raise Unauthenticated("Access token is invalid", "TOKEN_INVALID") from None
        # Expiry is checked against the caller's clock, not the library's, so tests can move time.
        if claims["exp"] <= now.timestamp():
            raise Unauthenticated("Access token has expired", "TOKEN_EXPIRED")
        return principal
