import logging
import re
import uuid
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors

from domain.errors import AuthError, Code, DomainError, InputError, LimitReached, NotFound, Unauthenticated

log = logging.getLogger("newfriends.errors")

ErrorCode = strawberry.enum(Code, name="ErrorCode", description="Stable machine-readable error codes.")


@strawberry.interface(name="Error", description="An expected failure, returned as a member of a result union.")
class ErrorGQL:
    code: Code
    message: str


@strawberry.type(name="InputError", description="A field of the input is not acceptable.")
class InputErrorGQL(ErrorGQL):
    field: str | None


@strawberry.type(name="AuthError", description="Credentials, tokens or account state refuse the request.")
class AuthErrorGQL(ErrorGQL):
    field: str | None


@strawberry.type(name="NotFoundError", description="No such object, or not one you may see.")
class NotFoundErrorGQL(ErrorGQL):
    pass


@strawberry.type(name="LimitError", description="A quota or rate limit; try again after the given time.")
class LimitErrorGQL(ErrorGQL):
    retry_after_seconds: int


@strawberry.type(name="StateError", description="The current state does not allow this (nothing to undo, ...).")
class StateErrorGQL(ErrorGQL):
    pass


# Any: each mutation's union admits a different subset of these, which Python's types cannot
# express; strawberry checks the member against the union at run time, and the tests cover each.
def error_member(exc: DomainError) -> Any:
    if isinstance(exc, InputError):
        return InputErrorGQL(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, AuthError):
        return AuthErrorGQL(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, NotFound):
        return NotFoundErrorGQL(code=exc.code, message=exc.message)
    if isinstance(exc, LimitReached):
        return LimitErrorGQL(code=exc.code, message=exc.message, retry_after_seconds=exc.retry_after_seconds)
    if type(exc) is DomainError and exc.code is not Code.UNAVAILABLE:
        return StateErrorGQL(code=exc.code, message=exc.message)
    raise exc  # anything else travels as a top-level error


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")
_COERCION = re.compile(r"^Variable '\$\w+' (got invalid value|of required type .* was not provided|of non-null type)")


def _with_code(error: GraphQLError, code: str, message: str | None = None, **extra: Any) -> GraphQLError:
    return GraphQLError(
        message if message is not None else error.message, nodes=error.nodes, source=error.source,
        positions=error.positions, path=error.path, original_error=None,
        extensions={**(error.extensions or {}), "code": code, **extra},
    )


def classify(error: GraphQLError, *, hide_suggestions: bool) -> GraphQLError:
    original = error.original_error
    if isinstance(original, DomainError):
        extra = {"reason": original.reason} if isinstance(original, Unauthenticated) else {}
        if original.field:
            extra["field"] = original.field
        return _with_code(error, original.code.value, original.message, **extra)
    if error.path is None:
        # Before execution: the document or the variables are wrong; never a server fault.
        message = _SUGGESTION.sub("", error.message) if hide_suggestions else error.message
        if message.startswith("Syntax Error"):
            return _with_code(error, Code.GRAPHQL_PARSE_FAILED.value, message)
        if original is not None or _COERCION.search(message):
            return _with_code(error, Code.BAD_USER_INPUT.value, message)
        return _with_code(error, (error.extensions or {}).get("code", Code.GRAPHQL_VALIDATION_FAILED.value), message)
    error_id = uuid.uuid4().hex
    log.error("unexpected error %s at %s", error_id, ".".join(map(str, error.path)), exc_info=original or error)
    return _with_code(error, Code.INTERNAL_SERVER_ERROR.value, f"Internal server error (id {error_id})",
                      errorId=error_id)


class ErrorCodes(MaskErrors):
    """Gives every error a stable extensions.code; masks (and logs with an id) what nobody expected."""

    def __init__(self, hide_suggestions: bool = False) -> None:
        super().__init__()
        self._hide = hide_suggestions

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [classify(e, hide_suggestions=self._hide) for e in errors]

