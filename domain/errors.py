from enum import Enum


class Code(str, Enum):
    # Input the client can fix.
    INVALID_INPUT = "INVALID_INPUT"
    INVALID_ID = "INVALID_ID"
    INVALID_EMAIL = "INVALID_EMAIL"
    INVALID_TEXT = "INVALID_TEXT"
    TEXT_TOO_LONG = "TEXT_TOO_LONG"
    TEXT_TOO_SHORT = "TEXT_TOO_SHORT"
    PASSWORD_TOO_SHORT = "PASSWORD_TOO_SHORT"
    PASSWORD_TOO_LONG = "PASSWORD_TOO_LONG"
    INVALID_BIRTH_DATE = "INVALID_BIRTH_DATE"
    UNDER_AGE = "UNDER_AGE"
    UNKNOWN_TAG = "UNKNOWN_TAG"
    TOO_MANY_TAGS = "TOO_MANY_TAGS"
    INVALID_AGE_RANGE = "INVALID_AGE_RANGE"
    INVALID_DISTANCE = "INVALID_DISTANCE"
    CANNOT_SWIPE_SELF = "CANNOT_SWIPE_SELF"
    CANNOT_TARGET_SELF = "CANNOT_TARGET_SELF"
    NOTHING_TO_UNDO = "NOTHING_TO_UNDO"
    ALREADY_MATCHED = "ALREADY_MATCHED"
    CHAT_CLOSED = "CHAT_CLOSED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    INVALID_CURSOR = "INVALID_CURSOR"
    INVALID_LOCATION = "INVALID_LOCATION"
    IMPOSSIBLE_TRAVEL = "IMPOSSIBLE_TRAVEL"
    LOCATION_REQUIRED = "LOCATION_REQUIRED"
    UNSUPPORTED_PHOTO_TYPE = "UNSUPPORTED_PHOTO_TYPE"
    PHOTO_TOO_LARGE = "PHOTO_TOO_LARGE"
    TOO_MANY_PHOTOS = "TOO_MANY_PHOTOS"
    PHOTOS_CHANGED = "PHOTOS_CHANGED"
    # State conflicts.
    EMAIL_TAKEN = "EMAIL_TAKEN"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_REFRESH_TOKEN = "INVALID_REFRESH_TOKEN"
    # Access.
    UNAUTHENTICATED = "UNAUTHENTICATED"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    # A dependency is briefly away; the same request may succeed later (resubscribe, retry).
    UNAVAILABLE = "UNAVAILABLE"
    # Transport and document level; never raised by the domain itself.
    BAD_REQUEST = "BAD_REQUEST"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class DomainError(Exception):
    """An expected failure: it carries a stable code and a message safe to show the user."""

    def __init__(self, code: Code, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class InputError(DomainError):
    pass


class AuthError(DomainError):
    pass


class NotFound(DomainError):
    def __init__(self, what: str = "Object") -> None:
        super().__init__(Code.NOT_FOUND, f"{what} not found")


class LimitReached(DomainError):
    def __init__(self, code: Code, message: str, retry_after_seconds: int) -> None:
        super().__init__(code, message)
        self.retry_after_seconds = retry_after_seconds


class Unauthenticated(DomainError):
    # reason tells a client whether refreshing its token can help (TOKEN_EXPIRED) or not.
    def __init__(self, message: str = "Sign in required", reason: str = "SIGN_IN_REQUIRED") -> None:
        super().__init__(Code.UNAUTHENTICATED, message)
        self.reason = reason
