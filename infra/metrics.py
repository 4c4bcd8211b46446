import time
from collections.abc import Iterator

from graphql import ExecutionResult as CoreResult
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.types.execution import ExecutionResult
from strawberry.types.graphql import OperationType

REGISTRY = CollectorRegistry()
OPERATIONS = Counter(
    "graphql_operations", "GraphQL operations executed", ["operation", "type"], registry=REGISTRY
)
LATENCY = Histogram(
    "graphql_operation_seconds", "GraphQL operation latency", ["operation", "type"], registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ERRORS = Counter("graphql_errors", "GraphQL errors by code", ["code"], registry=REGISTRY)
HTTP_REJECTIONS = Counter(
    "http_rejected_requests", "Requests refused before GraphQL ran", ["code"], registry=REGISTRY
)
WEBSOCKETS = Gauge("websocket_connections", "Open WebSocket connections", registry=REGISTRY)
# Counted down only once the subscription's resolver has run its cleanup: a socket that drops
# without freeing what it held shows here, and in asyncio_tasks.
SUBSCRIPTIONS = Gauge("graphql_subscriptions", "Live GraphQL subscriptions", registry=REGISTRY)
ASYNCIO_TASKS = Gauge("asyncio_tasks", "Tasks alive in the event loop, when last scraped", registry=REGISTRY)


# Operation names come from clients; past this many distinct ones, new names count as "other" so
# that nobody can grow the process's memory by inventing names.
MAX_OPERATION_NAMES = 500
_seen_names: set[str] = set()


def operation_label(name: str | None) -> str:
    label = (name or "anonymous")[:64]
    if label not in _seen_names:
        if len(_seen_names) >= MAX_OPERATION_NAMES:
            return "other"
        _seen_names.add(label)
    return label


class Metrics(SchemaExtension):
    live = False

    def on_execute(self) -> Iterator[None]:
        # For a subscription the operation hook spans its whole life; only here is its type known.
        if self.execution_context.operation_type is OperationType.SUBSCRIPTION:
            self.live = True
            SUBSCRIPTIONS.inc()
        yield

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            # A subscription ends by cancellation or a closed generator as often as by completing.
            if self.live:
                SUBSCRIPTIONS.dec()
        ctx = self.execution_context
        name = operation_label(ctx.operation_name)
        try:
            kind = ctx.operation_type.value
        except (RuntimeError, CannotGetOperationTypeError):  # unparsable document or unknown operation
            kind = "invalid"
        OPERATIONS.labels(name, kind).inc()
        LATENCY.labels(name, kind).observe(time.perf_counter() - started)
        result = ctx.result
        if isinstance(result, (ExecutionResult, CoreResult)):
            for error in result.errors or ():
                ERRORS.labels(str((error.extensions or {}).get("code", "UNKNOWN"))).inc()
