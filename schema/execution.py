"""Execution with a shortcut for plain data.

graphql-core resolves and completes every field of every object on its own: an info object, a path,
a resolver call and a completion each time, several microseconds a field. A page of twenty people
with their tags is about 550 fields, and that took longer than finding, ranking and loading them.
Most of those fields only read an attribute and serialise it. For a field whose whole selection is
like that (no resolver, argument, interface, union or directive but @include and @skip below), this
executor writes a small Python function that reads the attributes and serialises the leaves in one
pass, one function per object, strings, ids, numbers and enums checked inline: closures nested per
field and per type wrapper still cost a call each, and were most of a page's time. It is written
once per operation, or once per parsed document when no variable can change what it selects. Such a
selection has no side effects, so anything unusual on the way (a null where none may be, a value
that does not serialise, a failing attribute) just hands the field back to graphql-core, which
resolves it again from the start and reports what went wrong as it always does.
"""

import keyword
from collections import OrderedDict
from collections.abc import Callable
from types import CodeType
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLField,
    GraphQLID,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    GraphQLString,
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
# Values these scalars serialise as themselves, when they are of exactly this class (a str
# subclass, such as a str-valued enum member, takes the scalar's own path).
_AS_IS = {GraphQLString.name: "str", GraphQLID.name: "str", GraphQLBoolean.name: "bool"}
_INT_RANGE = "-2147483648 <= {0} <= 2147483647"


def _plain_nodes(field_details_list: FieldDetailsList) -> bool:
    return all(not d.node.arguments and all(x.name.value in _APPLIED_DIRECTIVES for x in d.node.directives or ())
               for d in field_details_list)


class _Writer:
    """The text of one generated module and the objects its code names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"HandBack": HandBack, "LIST_OR_TUPLE": (list, tuple)}
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def constant(self, value: Any, prefix: str = "k") -> str:
        name = self.fresh(prefix)
        self.names[name] = value
        return name


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
        if field_details_list[0].node.name.value == "__typename":
            type_name = parent_type.name
            return lambda _: type_name
        found = self._field(parent_type, field_details_list)
        if found is None:
            return None
        attribute, type_ = found
        out = _Writer()
        body: list[str] = []
        if not self._complete(out, type_, field_details_list, "value", body, "    "):
            return None
        out.lines += ["def complete(source):", f"    value = {_read('source', attribute)}", *body, "    return value"]
        plan: Complete = _load(out)["complete"]
        return plan

    def _field(self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList
               ) -> tuple[str, GraphQLOutputType] | None:
        field = self.schema.get_field(parent_type, field_details_list[0].node.name.value)
        attribute = _attribute(field) if field is not None else None
        if field is None or attribute is None:
            return None
        return attribute, field.type

    def _complete(self, out: _Writer, type_: GraphQLOutputType, field_details_list: FieldDetailsList, var: str,
                  lines: list[str], indent: str) -> bool:
        """Appends the lines that replace the raw value in `var` by its completed value; False if the
        selection is not plain data."""
        required = isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if is_leaf_type(inner):
            assert isinstance(inner, GraphQLLeafType)
            _complete_leaf(out, inner, required, var, lines, indent)
            return True
        if isinstance(inner, GraphQLObjectType):
            function = self._object(out, inner, field_details_list, required)
            if function is None:
                return False
            lines.append(f"{indent}{var} = {function}({var})")
            return True
        if isinstance(inner, GraphQLList):
            item = self._item(out, inner.of_type, field_details_list)
            if item is None:
                return False
            lines += [f"{indent}if {var} is None:",
                      f"{indent}    raise HandBack" if required else f"{indent}    pass",
                      f"{indent}elif {var}.__class__ is list or isinstance({var}, LIST_OR_TUPLE):",
                      f"{indent}    {var} = [{item}(item) for item in {var}]",
                      f"{indent}else:",
                      f"{indent}    raise HandBack"]
            return True
        return False  # interfaces and unions: the runtime type decides the selection

    def _item(self, out: _Writer, type_: GraphQLOutputType, field_details_list: FieldDetailsList) -> str | None:
        """The name of a function completing one item of a list."""
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(inner, GraphQLObjectType):
            return self._object(out, inner, field_details_list, isinstance(type_, GraphQLNonNull))
        name = out.fresh("item")
        body: list[str] = []
        if not self._complete(out, type_, field_details_list, "value", body, "    "):
            return None
        out.lines += [f"def {name}(value):", *body, "    return value"]
        return name

    def _object(self, out: _Writer, type_: GraphQLObjectType, field_details_list: FieldDetailsList,
                required: bool) -> str | None:
        """The name of a function completing an object of this type, None if it is not plain data."""
        if type_.is_type_of is not None:
            return None  # types that check their values (those with interfaces) take graphql-core's path
        grouped, deferred, _ = self.collect_subfields(type_, field_details_list)
        if deferred:
            return None
        name = out.fresh(f"complete_{type_.name}_")
        body: list[str] = ["    if source is None:", "        raise HandBack" if required else "        return None"]
        entries: list[str] = []
        for response_name, details in grouped.items():
            if not _plain_nodes(details):
                return None
            if details[0].node.name.value == "__typename":
                entries.append(f"{response_name!r}: {type_.name!r}")
                continue
            found = self._field(type_, details)
            if found is None:
                return None
            attribute, field_type = found
            var = out.fresh("value")
            body.append(f"    {var} = {_read('source', attribute)}")
            if not self._complete(out, field_type, details, var, body, "    "):
                return None
            entries.append(f"{response_name!r}: {var}")
        out.lines += [f"def {name}(source):", *body, f"    return {{{', '.join(entries)}}}"]
        return name


def _complete_leaf(out: _Writer, type_: GraphQLLeafType, required: bool, var: str, lines: list[str],
                   indent: str) -> None:
    generic = out.constant(_non_null(_leaf(type_)) if required else _leaf(type_), "leaf")
    as_is = _AS_IS.get(type_.name) if type_ in (GraphQLString, GraphQLID, GraphQLBoolean) else None
    if as_is is not None:
        lines += [f"{indent}if {var}.__class__ is not {as_is}:", f"{indent}    {var} = {generic}({var})"]
    elif type_ is GraphQLInt:
        lines += [f"{indent}if {var}.__class__ is not int or not {_INT_RANGE.format(var)}:",
                  f"{indent}    {var} = {generic}({var})"]
    elif isinstance(type_, GraphQLEnumType) and (names := _enum_names(type_)) is not None:
        members, by_member = out.constant(names[0], "enum"), out.constant(names[1], "names")
        lines += [f"{indent}if {var}.__class__ is {members}:", f"{indent}    {var} = {by_member}[{var}]",
                  f"{indent}else:", f"{indent}    {var} = {generic}({var})"]
    else:
        lines.append(f"{indent}{var} = {generic}({var})")


def _enum_names(type_: GraphQLEnumType) -> tuple[type, dict[Any, Any]] | None:
    """For an enum backed by a Python enum (strawberry's), that class and each member's output."""
    members = getattr(type_, "wrapped_cls", None)
    if not isinstance(members, type):
        return None
    try:
        return members, {member: type_.coerce_output_value(member) for member in members}  # type: ignore[attr-defined]
    except Exception:
        return None


def _read(owner: str, attribute: str) -> str:
    if attribute.isidentifier() and not keyword.iskeyword(attribute) and not attribute.startswith("__"):
        return f"{owner}.{attribute}"
    return f"getattr({owner}, {attribute!r})"


# Compiled module texts: a document with @include or @skip writes its functions for every operation,
# and the same text is then compiled once (the objects it names differ, and are bound anew).
COMPILED_TEXTS = 256
_COMPILED: OrderedDict[str, CodeType] = OrderedDict()


def _load(out: _Writer) -> dict[str, Any]:
    text = "\n".join(out.lines) + "\n"
    code = _COMPILED.get(text)
    if code is None:
        code = _COMPILED[text] = compile(text, "<plain data>", "exec")
        while len(_COMPILED) > COMPILED_TEXTS:
            _COMPILED.popitem(last=False)
    namespace = dict(out.names)
    # The text names nothing but schema names (checked by the parser) and repr()s of them.
    exec(code, namespace)
    return namespace


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

