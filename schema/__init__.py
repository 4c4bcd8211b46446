from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import strawberry
from graphql import DocumentNode, GraphQLError, OperationDefinitionNode
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from graphql.validation.rules import overlapping_fields_can_be_merged
from strawberry.extensions import SchemaExtension
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from schema.cost import CostBudget
from schema.errors import ErrorCodes
from schema.execution import PlainDataExecution
from schema.hooks import KnownHooksRunner
from schema.ratelimit import RateLimits
from schema.root import BenchMutation, Mutation, Query, Subscription
from schema.shape import Shape, measure

SDL_PATH = Path(__file__).resolve().parent.parent / "schema.graphql"


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        pass  # ErrorCodes logs what nobody expected, with the id the client sees; the rest is noise

    def create_extensions_runner(self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
                                 ) -> SchemaExtensionsRunner:
        return KnownHooksRunner(execution_context=execution_context, extensions=extensions)


Extension = type[SchemaExtension] | Callable[[], SchemaExtension]
MAX_TOKENS, MAX_ALIASES, MAX_DEPTH = 5_000, 50, 10
MAX_BATCH = 10  # operations in one HTTP request (a JSON array); each is limited as if sent alone
KNOWN_DOCUMENT_CHARS = 4_000  # longer documents are parsed and validated every time
KNOWN_CHARS = 100_000  # all kept texts together; a syntax tree takes up to ~300 bytes per character
# Fragments spelled out may not make a document larger than its tokens could have said plainly.
MAX_FIELDS = MAX_TOKENS
# graphql-core compares the fields of one name in a selection pairwise: 2,000 copies of one field
# spent its default budget (500,000) in a tenth of a second before it gave up. Copies written out
# are refused before that (MAX_REPEATS); copies in as many fragments still meet this budget. Real
# documents spend nothing of it (GraphiQL's introspection: 0).
MAX_REPEATS = 50
overlapping_fields_can_be_merged.MAX_COMPLEXITY_BUDGET = 20_000


class Known:
    """Documents that passed validation, by text, with their syntax trees; the least used go first."""

    def __init__(self) -> None:
        self._trees: OrderedDict[str, DocumentNode] = OrderedDict()
        self._chars = 0

    def get(self, key: str) -> DocumentNode | None:
        tree = self._trees.get(key)
        if tree is not None:
            self._trees.move_to_end(key)
        return tree

    def add(self, key: str, tree: DocumentNode) -> None:
        self._trees[key] = tree
        self._chars += len(key)
        while self._chars > KNOWN_CHARS:
            text, _ = self._trees.popitem(last=False)
            self._chars -= len(text)


class KnownDocuments(SchemaExtension):
    # Clients send the same few documents over and over, and parsing and validating one again costs
    # more than most resolvers (0.95 ms for a like, against microseconds to look it up). Only
    # documents that passed are kept, within a budget: a flood of distinct ones only evicts.
    def __init__(self, known: Known) -> None:
        super().__init__()
        self._known = known
        self._key: str | None = None
        self._hit = False

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query and len(context.query) <= KNOWN_DOCUMENT_CHARS:
            # By text alone: a schema's rules never change, but the limiters below make new rule
            # classes for every operation, so the rules would never compare equal.
            self._key = context.query
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


def _too_big(shape: Shape) -> str | None:
    if shape.circular:
        return f"Fragments spread themselves in a cycle (among {', '.join(shape.circular)})"
    if shape.fields > MAX_FIELDS:
        return f"{shape.fields} fields with fragments spelled out. Allowed: {MAX_FIELDS}"
    if shape.aliases > MAX_ALIASES:
        return f"{shape.aliases} aliases found. Allowed: {MAX_ALIASES}"
    if shape.repeats > MAX_REPEATS:
        return f"'{shape.repeated}' is asked {shape.repeats} times in one selection. Allowed: {MAX_REPEATS}"
    return None


class RequestShape(SchemaExtension):
    # What graphql-core would let through over HTTP: a subscription executed as a query (a null
    # where a stream should be: an internal error), or the first of several operations when the
    # request names none (the spec requires a refusal).
    def on_validate(self) -> Iterator[None]:
        # Before validation runs: strawberry looks at pre_execution_errors before leaving this hook.
        self._check()
        yield

    def _check(self) -> None:
        context = self.execution_context
        document = context.graphql_document
        if document is None or context.pre_execution_errors:
            return
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        # Measured here, before the limiters' rules, which run only alongside every other rule (500
        # aliases of one field took 50 ms of validation to refuse, this walk well under 1) and follow
        # every spread of every fragment. A known document (errors already settled as none) passed.
        refusal = _too_big(measure(document)) if context.pre_execution_errors is None else None
        if refusal:
            context.pre_execution_errors = [GraphQLError(refusal, extensions={"code": "GRAPHQL_VALIDATION_FAILED"})]
            return
        problem = None
        # operation_name falls back to the first operation's name: only the one the client sent counts.
        if len(operations) > 1 and not getattr(context, "_provided_operation_name", None):
            problem = "The document has several operations: say which one to run in operationName"
        elif not getattr(context.context, "over_websocket", True):
            try:
                if context.operation_type is OperationType.SUBSCRIPTION:
                    problem = "Subscriptions run over a WebSocket (graphql-transport-ws or graphql-ws)"
            except Exception:  # an unknown operationName: graphql-core reports it itself
                return
        if problem:
            context.pre_execution_errors = [GraphQLError(problem, extensions={"code": "BAD_REQUEST"})]


class DocumentLimits(SchemaExtension):
    # What strawberry's MaxTokensLimiter and AddValidationRules do, in the parse and validate hooks
    # rather than the operation hook: a subscription keeps its operation hooks (a suspended
    # generator, its context manager and wrapper each) for as long as it lives.
    def __init__(self, rules: Sequence[type[ASTValidationRule]]) -> None:
        super().__init__()
        self._rules = tuple(rules)

    def on_parse(self) -> Iterator[None]:
        self.execution_context.parse_options["max_tokens"] = MAX_TOKENS
        yield

    def on_validate(self) -> Iterator[None]:
        # Before strawberry validates, which it does when this hook's turn is over.
        self.execution_context.validation_rules = self.execution_context.validation_rules + self._rules
        yield


def build_schema(*, production: bool = False, extensions: Sequence[Extension] = (),
                 bench_noop: bool = False) -> strawberry.Schema:
    # Factories, not instances: strawberry makes one per operation, and extensions keep
    # per-operation state.
    known = Known()  # per schema: what passed one schema's validation says nothing about another's
    # One request must not cost the server what thousands would: a 20,000-alias document took an
    # API process for 20 s. Introspection (GraphiQL's is 13 levels deep) does not count. The rule
    # classes are made once: strawberry's limiters make new ones per operation, and a subscription
    # keeps its operation's extensions as long as it lives (KiBs per idle socket).
    limits: list[type[ASTValidationRule]] = [
        aliases_rule(MAX_ALIASES), depth_rule(MAX_DEPTH, lambda ctx: ctx.field_name.startswith("__"), None),
        CostBudget]
    if production:
        limits.append(NoSchemaIntrospectionCustomRule)
    chosen: list[Extension] = [
        *extensions, lambda: ErrorCodes(hide_suggestions=production), lambda: KnownDocuments(known), RequestShape,
        lambda: DocumentLimits(limits), RateLimits,
    ]
    mutation = BenchMutation if bench_noop else Mutation
    return Schema(query=Query, mutation=mutation, subscription=Subscription, extensions=chosen,
                  config=StrawberryConfig(batching_config={"max_operations": MAX_BATCH}),
                  execution_context_class=PlainDataExecution)


def sdl() -> str:
    return build_schema().as_str() + "\n"
