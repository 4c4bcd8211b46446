"""Execution with a shortcut for plain data.

graphql-core resolves and completes every field of every object on its own: an info object, a path,
a resolver call and a completion each time, several microseconds a field. A page of twenty people
with their tags is about 550 fields, and that took longer than finding, ranking and loading them.
Most of those fields only read an attribute and serialise it. For a field whose whole selection is
like that (no resolver, argument, interface, union or directive but @include and @skip below), this
executor builds a function that reads the attributes and serialises the leaves in one pass: once per
operation, or once per parsed document when no variable can change what it selects. Such a selection
has no side effects, so anything unusual on the way (a null where none may be, a value that does not
serialise, a failing attribute) just hands the field back to graphql-core, which resolves it again
from the start and reports what went wrong as it always does.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import AwaitableOrValue, Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter

Complete = Callable[[Any], Any]
_BACKREF = GraphQLCoreConverter.DEFINITION_BACKREF


class HandBack(Exception):
    """The shortcut cannot answer for this value; graphql-core will."""


# Collecting the fields applied these already: a field they leave in is plain data like any other.
_APPLIED_DIRECTIVES = frozenset({"include", "skip"})


def _plain_nodes(field_details_list: FieldDetailsList) -> bool:
    return all(not d.node.arguments and all(x.name.value in _APPLIED_DIRECTIVES for x in d.node.directives or ())
               for d in field_details_list)


class PlainDataExecution(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The field details lists are kept alive with their plans, so that their ids stay theirs.
        self._plans: dict[tuple[str, int], tuple[FieldDetailsList, Complete | None]] = {}
        manager = self.middleware_manager
        self._shortcut = manager is None or not manager.middlewares
        self._shared = _shared_plans(self.schema, self.operation, self.fragment_definitions) if self._shortcut else None

    def execute_field(self, parent_type: GraphQLObjectType, source: Any, field_details_list: FieldDetailsList,
                      path: Path, position_context: Any) -> AwaitableOrValue[Any]:
        if self._shortcut:
            plan = self._plan(parent_type, field_details_list)
            if plan is not None:
                try:
                    return plan(source)
                except Exception:  # graphql-core resolves it again, and reports what went wrong
                    pass
        return super().execute_field(parent_type, source, field_details_list, path, position_context)

    def _plan(self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList) -> Complete | None:
        key = (parent_type.name, id(field_details_list))
        known = self._plans.get(key)
        if known is None:
            if self._shared is None:
                plan = self._compile_field(parent_type, field_details_list)
            else:
                # The same nodes of the same document select the same fields every time.
                shared_key = (parent_type.name, *[id(d.node) for d in field_details_list])
                if shared_key in self._shared:
                    plan = self._shared[shared_key]
                else:
                    plan = self._shared[shared_key] = self._compile_field(parent_type, field_details_list)
            known = self._plans[key] = (field_details_list, plan)
        return known[1]

    def _compile_field(self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList) -> Complete | None:
        if not _plain_nodes(field_details_list):
            return None
        name = field_details_list[0].node.name.value
        if name == "__typename":
            type_name = parent_type.name
            return lambda _: type_name
        field = self.schema.get_field(parent_type, name)
        attribute = _attribute(field) if field is not None else None
        if field is None or attribute is None:
            return None
        complete = self._compile_type(field.type, field_details_list)
        if complete is None:
            return None
        return lambda source: complete(getattr(source, attribute))

    def _compile_type(self, type_: GraphQLOutputType, field_details_list: FieldDetailsList) -> Complete | None:
        if isinstance(type_, GraphQLNonNull):
            inner = self._compile_type(type_.of_type, field_details_list)
            return None if inner is None else _non_null(inner)
        if isinstance(type_, GraphQLList):
            item = self._compile_type(type_.of_type, field_details_list)
            return None if item is None else _list(item)
        if is_leaf_type(type_):
            return _leaf(type_)
        if isinstance(type_, GraphQLObjectType):
            return self._compile_object(type_, field_details_list)
        return None  # interfaces and unions: the runtime type decides the selection

    def _compile_object(self, type_: GraphQLObjectType, field_details_list: FieldDetailsList) -> Complete | None:
        if type_.is_type_of is not None:
            return None  # types that check their values (those with interfaces) take graphql-core's path
        grouped, deferred, _ = self.collect_subfields(type_, field_details_list)
        if deferred:
            return None
        fields: list[tuple[str, Complete]] = []
        for response_name, details in grouped.items():
            plan = self._plan(type_, details)
            if plan is None:
                return None
            fields.append((response_name, plan))

        def complete(value: Any) -> Any:
            if value is None:
                return None
            return {response_name: plan(value) for response_name, plan in fields}

        return complete


# Plans of operations whose field selection no variable can change (no directive anywhere in it),
# shared by every execution of the same parsed document (the parsed-document cache hands out the same
# tree each time) on the same schema; the least recently added go first. Each entry keeps its
# schema and operation alive, so that no other can take their ids.
SHARED_OPERATIONS = 256
_SHARED: OrderedDict[tuple[int, int], tuple[GraphQLSchema, OperationDefinitionNode,
                                            dict[tuple[Any, ...], Complete | None]]] = OrderedDict()


def _shared_plans(schema: GraphQLSchema, operation: OperationDefinitionNode,
                  fragments: dict[str, FragmentDefinitionNode]) -> dict[tuple[Any, ...], Complete | None] | None:
    key = (id(schema), id(operation))
    entry = _SHARED.get(key)
    if entry is not None and entry[0] is schema and entry[1] is operation:
        return entry[2]
    if _has_directives(operation.selection_set, fragments, set()):
        return None
    plans: dict[tuple[Any, ...], Complete | None] = {}
    _SHARED[key] = (schema, operation, plans)
    while len(_SHARED) > SHARED_OPERATIONS:
        _SHARED.popitem(last=False)
    return plans


def _has_directives(selections: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode],
                    seen: set[str]) -> bool:
    for selection in selections.selections if selections is not None else ():
        if selection.directives:
            return True
        if isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if name not in seen and fragment is not None:
                seen.add(name)
                if fragment.directives or _has_directives(fragment.selection_set, fragments, seen):
                    return True
        elif isinstance(selection, FieldNode | InlineFragmentNode) and _has_directives(
                selection.selection_set, fragments, seen):
            return True
    return False


def _attribute(field: GraphQLField) -> str | None:
    """The attribute a field reads when it is plain data (strawberry's default resolver), else None."""
    definition = (field.extensions or {}).get(_BACKREF)
    if (definition is None or field.args or not getattr(field.resolve, "_is_default", False)
            or not definition.is_basic_field or definition.default_resolver is not getattr):
        return None
    name: str = definition.python_name
    return name


def _non_null(inner: Complete) -> Complete:
    def complete(value: Any) -> Any:
        completed = inner(value)
        if completed is None:
            raise HandBack
        return completed

    return complete


def _list(item: Complete) -> Complete:
    def complete(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise HandBack
        return [item(v) for v in value]

    return complete


def _leaf(type_: GraphQLLeafType) -> Complete:
    coerce = type_.coerce_output_value

    def complete(value: Any) -> Any:
        if value is None:
            return None
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise HandBack
        return coerced

    return complete

