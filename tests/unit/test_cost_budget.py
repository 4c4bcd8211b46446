"""The cost budget: pages multiply what is under them, and an expensive document is refused during
validation with a code, before anything runs."""
from graphql import parse, validate

from schema import build_schema
from schema.cost import MAX_COST, CostBudget

CARDS = ("nearbyCandidates(first: 100) { pageInfo { hasNextPage }"
         " edges { node { person { id displayName interestTags { slug label } } } } }")


def costs(document: str) -> list[dict]:
    errors = validate(build_schema()._schema, parse(document), [CostBudget])
    return [dict(e.extensions or {}) for e in errors]


def aliased(times: int, field: str) -> str:
    return " ".join(f"a{i}: {field}" for i in range(times))


def test_a_large_page_fits_and_many_of_them_do_not() -> None:
    assert costs(f"query {{ {CARDS} }}") == []
    refused = costs(f"query {{ {aliased(12, CARDS)} }}")
    assert len(refused) == 1 and refused[0]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert refused[0]["cost"] > MAX_COST == refused[0]["maxCost"]
    # Per page of 100: the connection and its edges once, node, person and three fields a hundred
    # times each, the two fields of each person's (unpaged) tags ten times that.
    assert refused[0]["cost"] == 12 * (1 + 2 + 1 + 100 * 2 + 100 * 3 + 100 * 10 * 2)


def test_page_sizes_from_variables_count_as_the_largest_page() -> None:
    variable = CARDS.replace("first: 100", "first: $n")
    assert costs(f"query($n: Int) {{ {aliased(12, variable)} }}")[0]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert costs(f"query {{ {aliased(12, CARDS.replace('first: 100', 'first: 5'))} }}") == []


async def test_the_schema_refuses_it_before_anything_runs() -> None:
    result = await build_schema().execute(f"query {{ {aliased(12, CARDS)} }}")
    assert result.data is None and result.errors
    assert result.errors[0].extensions and result.errors[0].extensions["code"] == "GRAPHQL_VALIDATION_FAILED"
