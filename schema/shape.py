"""A document's size with its fragments spelled out, measured in one pass before validation.

A fragment spread twice counts twice, so a chain of fragments that each spread the one before twice
makes a few hundred tokens stand for millions of fields. The limiters that follow spreads (strawberry's
alias and depth limits, the cost budget) walk every copy: eighteen such fragments kept a process busy
for three seconds. Here each fragment is measured once and reused, so the walk is linear in the text.
"""

from collections import Counter
from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)


@dataclass(frozen=True)
class Shape:
    fields: int = 0  # every field of every operation, each fragment counted as often as it is spread
    aliases: int = 0
    repeated: str = ""  # the response name asked most often within one selection
    repeats: int = 0
    # Fragments that spread one another, and those that spread them: graphql refuses such a document,
    # and nothing else is measured.
    circular: tuple[str, ...] = ()


def _spreads(selections: SelectionSetNode) -> set[str]:
    found, pending = set(), [selections]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                found.add(selection.name.value)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                pending.append(selection.selection_set)
    return found


def _walk(selections: SelectionSetNode, sizes: dict[str, tuple[int, int]]) -> tuple[int, int, str, int]:
    fields = aliases = repeats = 0
    repeated, pending = "", [selections]
    while pending:
        # Inline fragments merge into the selection they sit in; each field's own selection is another.
        names: Counter[str] = Counter()
        group = [pending.pop()]
        while group:
            for selection in group.pop().selections:
                if isinstance(selection, FieldNode):
                    fields += 1
                    aliases += selection.alias is not None
                    names[(selection.alias or selection.name).value] += 1
                    if selection.selection_set is not None:
                        pending.append(selection.selection_set)
                elif isinstance(selection, InlineFragmentNode):
                    group.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    inner = sizes.get(selection.name.value, (0, 0))  # an unknown one: validation says so
                    fields, aliases = fields + inner[0], aliases + inner[1]
        if names:
            name, count = names.most_common(1)[0]
            if count > repeats:
                repeated, repeats = name, count
    return fields, aliases, repeated, repeats


def measure(document: DocumentNode) -> Shape:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    needs = {name: _spreads(f.selection_set) & fragments.keys() for name, f in fragments.items()}
    # Fragments in an order where each comes after those it spreads (Kahn's algorithm).
    waiting = {name: len(spread) for name, spread in needs.items()}
    needed_by: dict[str, list[str]] = {name: [] for name in fragments}
    for name, spread in needs.items():
        for other in spread:
            needed_by[other].append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    sizes: dict[str, tuple[int, int]] = {}
    repeated, repeats = "", 0
    while ready:
        name = ready.pop()
        fields, aliases, most, count = _walk(fragments[name].selection_set, sizes)
        sizes[name] = (fields, aliases)
        if count > repeats:
            repeated, repeats = most, count
        for other in needed_by[name]:
            waiting[other] -= 1
            if waiting[other] == 0:
                ready.append(other)
    if len(sizes) < len(fragments):
        return Shape(circular=tuple(sorted(set(fragments) - set(sizes))))
    total_fields = total_aliases = 0
    for operation in document.definitions:
        if isinstance(operation, OperationDefinitionNode):
            fields, aliases, most, count = _walk(operation.selection_set, sizes)
            total_fields, total_aliases = total_fields + fields, total_aliases + aliases
            if count > repeats:
                repeated, repeats = most, count
    return Shape(total_fields, total_aliases, repeated, repeats)
