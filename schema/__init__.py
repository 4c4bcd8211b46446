from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import strawberry
from graphql import DocumentNode, GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import AddValidationRules, SchemaExtension
from strawberry.types import ExecutionContext

from schema.errors import ErrorCodes
from schema.root import BenchMutation, Mutation, Query, Subscription

SDL_PATH = Path(__file__).resolve().parent.parent / "schema.graphql"


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        pass  # ErrorCodes logs what nobody expected, with the id the client sees; the rest is noise


Extension = type[SchemaExtension] | Callable[[], SchemaExtension]
KNOWN_DOCUMENT_CHARS = 4_000  # longer documents are parsed and validated every time
KNOWN_CHARS = 100_000  # all kept texts together; a syntax tree takes up to ~300 bytes per character
Key = tuple[str, tuple[Any, ...]]


class Known:
    """Documents that passed validation, by text, with their syntax trees; the least used go first."""

    def __init__(self) -> None:
        self._trees: OrderedDict[Key, DocumentNode] = OrderedDict()
        self._chars = 0

    def get(self, key: Key) -> DocumentNode | None:
        tree = self._trees.get(key)
        if tree is not None:
            self._trees.move_to_end(key)
        return tree

    def add(self, key: Key, tree: DocumentNode) -> None:
        self._trees[key] = tree
        self._chars += len(key[0])
        while self._chars > KNOWN_CHARS:
            (text, _), _ = self._trees.popitem(last=False)
            self._chars -= len(text)


class KnownDocuments(SchemaExtension):
    # Clients send the same few documents over and over, and parsing and validating one again costs
    # more than most resolvers (0.95 ms for a like, against microseconds to look it up). Only
    # documents that passed are kept, within a budget: a flood of distinct ones only evicts.
    def __init__(self, known: Known) -> None:
        super().__init__()
        self._known = known
        self._key: Key | None = None
        self._hit = False

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and len(context.query) <= KNOWN_DOCUMENT_CHARS:
            self._key = (context.query, tuple(context.validation_rules))
            tree = self._known.get(self._key)
            if tree is not None:
                context.graphql_document = tree  # strawberry parses only when no extension has
                self._hit = True
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if self._hit:
            context.pre_execution_errors = []  # and validates only when no extension has decided
        yield
        if self._key is not None and not self._hit and context.pre_execution_errors == [] \
                and context.graphql_document is not None:
            self._known.add(self._key, context.graphql_document)


def build_schema(*, production: bool = False, extensions: Sequence[Extension] = (),
                 bench_noop: bool = False) -> strawberry.Schema:
    # Factories, not instances: strawberry makes one per operation, and extensions keep
    # per-operation state.
    known = Known()  # per schema: what passed one schema's validation says nothing about another's
    chosen: list[Extension] = [*extensions, lambda: ErrorCodes(hide_suggestions=production),
                               lambda: KnownDocuments(known)]
    if production:
        chosen.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    mutation = BenchMutation if bench_noop else Mutation
    return Schema(query=Query, mutation=mutation, subscription=Subscription, extensions=chosen)


def sdl() -> str:
    return build_schema().as_str() + "\n"
