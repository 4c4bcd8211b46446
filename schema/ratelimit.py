from collections.abc import AsyncIterator

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension

from domain.errors import Code
from domain.ratelimits import RateLimiter, checks
from resolvers.claims import claimed_user


def root_fields(document: DocumentNode, operation_name: str | None) -> list[str] | None:
    """The root fields the operation selects (through fragments too); None for a subscription."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation is OperationType.SUBSCRIPTION:
        return None
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    found: list[str] = []

    def walk(selections: SelectionSetNode, seen: frozenset[str]) -> None:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                found.append(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                fragment = fragments.get(selection.name.value)
                if fragment is not None:  # validation refused unknown ones already
                    walk(fragment.selection_set, seen | {selection.name.value})

    walk(operation.selection_set, frozenset())
    return found


class RateLimits(SchemaExtension):
    # Queries and mutations, over HTTP and WebSocket alike, before any resolver runs. Subscriptions
    # are bounded per connection instead.
    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context
        limiter: RateLimiter | None = getattr(getattr(context.context, "ports", None), "rate_limiter", None)
        document = context.graphql_document
        fields = root_fields(document, context.operation_name) if document is not None else None
        if limiter is not None and limiter.scale > 0 and fields:
            # Counted against the person the token names, without waiting for the session check:
            # resolvers wait for it themselves, and a page of people nearby reads meanwhile.
            claimed = claimed_user(context.context)
            user = str(claimed) if claimed is not None else None
            wait = await limiter.take(checks(fields, user, context.context.client_ip, limiter.scale))
            if wait:
                context.result = ExecutionResult(data=None, errors=[GraphQLError(
                    f"Too many requests of this kind; try again in {wait} s",
                    extensions={"code": Code.RATE_LIMITED.value, "retryAfterSeconds": wait})])
        yield
