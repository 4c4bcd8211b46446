from collections.abc import Callable, Sequence
from pathlib import Path

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import AddValidationRules, SchemaExtension
from strawberry.types import ExecutionContext

from schema.errors import ErrorCodes
from schema.root import Mutation, Query, Subscription

SDL_PATH = Path(__file__).resolve().parent.parent / "schema.graphql"


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        pass  # ErrorCodes logs what nobody expected, with the id the client sees; the rest is noise


Extension = type[SchemaExtension] | Callable[[], SchemaExtension]


def build_schema(*, production: bool = False, extensions: Sequence[Extension] = ()) -> strawberry.Schema:
    # Factories, not instances: strawberry makes one per operation, and extensions keep
    # per-operation state.
    chosen: list[Extension] = [*extensions, lambda: ErrorCodes(hide_suggestions=production)]
    if production:
        chosen.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=chosen)


def sdl() -> str:
    return build_schema().as_str() + "\n"
