from collections.abc import Callable, Sequence
from pathlib import Path

import strawberry
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import AddValidationRules, SchemaExtension

from schema.errors import ErrorCodes
from schema.root import Mutation, Query, Subscription

SDL_PATH = Path(__file__).resolve().parent.parent / "schema.graphql"


Extension = type[SchemaExtension] | Callable[[], SchemaExtension]


def build_schema(*, production: bool = False, extensions: Sequence[Extension] = ()) -> strawberry.Schema:
    # Factories, not instances: strawberry makes one per operation, and extensions keep
    # per-operation state.
    chosen: list[Extension] = [*extensions, lambda: ErrorCodes(hide_suggestions=production)]
    if production:
        chosen.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=chosen)


def sdl() -> str:
    return build_schema().as_str() + "\n"
