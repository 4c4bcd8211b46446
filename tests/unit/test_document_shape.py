"""Documents measured with their fragments spelled out, in one pass, and refused before validation
when they are too big for the limits."""
import time

from graphql import get_introspection_query, parse

from schema import MAX_FIELDS, MAX_REPEATS, build_schema
from schema.shape import measure


def doubling(levels: int, leaf: str = "id") -> str:
    """Each fragment spreads the one before twice: a few tokens a level, twice the fields."""
    parts = [f"query {{ me {{ ...F{levels} }} }}", f"fragment F0 on Me {{ {leaf} }}"]
    parts += [f"fragment F{i} on Me {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, levels + 1)]
    return " ".join(parts)


def test_fragments_count_as_often_as_they_are_spread() -> None:
    shape = measure(parse(doubling(3, "a: id")))
    assert (shape.fields, shape.aliases) == (1 + 8, 8)
    assert measure(parse("{ me { id ... on Me { id bio } a: id } }")).repeats == 2
    assert measure(parse("{ a: me { id } b: me { id } }")).repeats == 1  # other names, other selections


def test_a_long_chain_of_fragments_is_measured_at_once() -> None:
    document = parse(doubling(400))
    started = time.process_time()
    shape = measure(document)
    assert time.process_time() - started < 0.5  # spelled out, 2**400 fields would never end
    assert shape.fields == 1 + 2 ** 400


def test_fragments_that_spread_one_another_are_named() -> None:
    document = "{ me { ...A } } fragment A on Me { ...B } fragment B on Me { ...A } fragment C on Me { ...A }"
    assert measure(parse(document)).circular == ("A", "B", "C")


def test_graphiql_introspection_is_small() -> None:
    shape = measure(parse(get_introspection_query(descriptions=True, input_value_deprecation=True)))
    assert shape.fields < MAX_FIELDS / 10 and shape.repeats == 1 and not shape.circular


async def test_the_schema_refuses_them_before_validation() -> None:
    schema = build_schema()
    cases = {
        doubling(30): "fields with fragments spelled out",
        "{ me { " + "id " * (MAX_REPEATS + 1) + "} }": f"'id' is asked {MAX_REPEATS + 1} times",
        "{ me { ...A } } fragment A on Me { ...B } fragment B on Me { ...A }": "in a cycle",
    }
    for document, message in cases.items():
        started = time.perf_counter()
        result = await schema.execute(document)
        assert time.perf_counter() - started < 0.5  # the limiters' walks took seconds at 18 levels
        assert result.data is None and result.errors and len(result.errors) == 1, result
        assert message in result.errors[0].message
        assert result.errors[0].extensions == {"code": "GRAPHQL_VALIDATION_FAILED"}
