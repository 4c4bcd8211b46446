"""A cost budget per operation, checked during validation (before any resolver runs).

Each field costs one, times the number of times it can run: a field under a page of `first: 100`
runs up to a hundred times, under an unpaged list an assumed ten. Depth, alias and token limits
bound a document's size; this bounds the work that a small document can ask for
(`matches(first: 100) { edges { node { person { interestTags ... } } } }` and the like).
"""

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
    get_named_type,
)

MAX_COST = 20_000
PAGE_ARGUMENTS = ("first", "last")
MAX_PAGE = 100  # what domain.cursors.page_size allows; a page size given as a variable counts as that
UNPAGED_LIST = 10


def _is_list(type_: Any) -> bool:
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    return isinstance(type_, GraphQLList)


def _page(field: FieldNode) -> int | None:
    for argument in field.arguments or ():
        if argument.name.value in PAGE_ARGUMENTS:
            value = argument.value
            if isinstance(value, IntValueNode):
                return max(0, min(int(value.value), MAX_PAGE))
            if isinstance(value, VariableNode):
                return MAX_PAGE
    return None


class CostBudget(ValidationRule):
    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        schema = self.context.schema
        root = schema.get_root_type(node.operation)
        if root is None:
            return
        fragments = {f.name.value: f for f in self.context.document.definitions
                     if isinstance(f, FragmentDefinitionNode)}
        cost = self._cost(node.selection_set, root, 1, fragments, frozenset())
        if cost > MAX_COST:
            self.report_error(GraphQLError(
                f"The operation may cost {cost}, over the budget of {MAX_COST}: ask for smaller pages or fewer fields",
                node, extensions={"code": "GRAPHQL_VALIDATION_FAILED", "cost": cost, "maxCost": MAX_COST}))

    def _cost(self, selections: SelectionSetNode, parent: Any, times: int,
              fragments: dict[str, FragmentDefinitionNode], seen: frozenset[str], page: int | None = None) -> int:
        # page: the size a paged field above announced, for the first list below it (a connection's
        # edges); the connection's other fields (pageInfo) run once.
        schema, total = self.context.schema, 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                fields = getattr(parent, "fields", None)
                definition = fields.get(selection.name.value) if fields else None
                if definition is None:  # __typename, or unknown (another rule reports it)
                    continue
                total += times
                if selection.selection_set is None:
                    continue
                own = _page(selection)
                if _is_list(definition.type):
                    size = own if own is not None else page if page is not None else UNPAGED_LIST
                    inner, below = times * size, None
                else:
                    inner, below = times, own if own is not None else page
                total += self._cost(selection.selection_set, get_named_type(definition.type), inner, fragments,
                                    seen, below)
            elif isinstance(selection, InlineFragmentNode):
                condition = schema.get_type(selection.type_condition.name.value) \
                    if selection.type_condition else parent
                total += self._cost(selection.selection_set, condition, times, fragments, seen, page)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = fragments.get(selection.name.value)
                if fragment is not None and fragment.name.value not in seen:  # cycles: another rule
                    condition = schema.get_type(fragment.type_condition.name.value)
                    total += self._cost(fragment.selection_set, condition, times, fragments,
                                        seen | {fragment.name.value}, page)
        return total
