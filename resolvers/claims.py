import uuid
from typing import Any

from domain.errors import DomainError


def claimed_user(context: Any) -> uuid.UUID | None:
    """Whom the request's access token names, its signature and expiry checked (both in memory);
    not yet whether its session is still open, which Context.require_user settles (a Redis read).
    A socket checked its token when it connected, and keeps who it named rather than the token."""
    principal = getattr(context, "principal", None)
    if principal is not None:
        return principal.user_id  # type: ignore[no-any-return]
    bearer, ports = getattr(context, "bearer", None), getattr(context, "ports", None)
    if bearer is None or ports is None:
        return None
    try:
        return ports.tokens.verify(bearer, ports.clock()).user_id  # type: ignore[no-any-return]
    except DomainError:
        return None
