"""The plain-data shortcut answers exactly what graphql-core answers, errors and their paths included."""
import asyncio
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from schema import Known, KnownDocuments
from schema.execution import PlainDataExecution


@strawberry.enum
class Mood(Enum):
    CALM = "calm"
    LOUD = "loud"


@strawberry.type
class Tag:
    slug: str
    label: str | None


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Pet(Named):
    legs: int


@strawberry.type
class Person:
    id: strawberry.ID
    name: str
    age: int
    mood: Mood
    tags: list[Tag]
    maybe_tags: list[Tag | None] | None
    pet: Pet | None
    best_friend: "Person | None"

    @strawberry.field
    async def shout(self, times: int = 1) -> str:
        await asyncio.sleep(0)
        return self.name.upper() * times


@strawberry.type
class Edge:
    cursor: str
    node: Person


def person(n: int, **changes: Any) -> Person:
    fields: dict[str, Any] = {
        "id": strawberry.ID(f"p{n}"), "name": f"Person {n}", "age": 20 + n, "mood": Mood.CALM if n % 2 else Mood.LOUD,
        "tags": [Tag(slug=f"t{i}", label=None if i == 1 else f"Tag {i}") for i in range(n % 4)],
        "maybe_tags": None if n % 3 == 0 else [Tag(slug="x", label="X"), None], "pet": Pet(name="Rex", legs=4),
        "best_friend": Person(id=strawberry.ID("bf"), name="Friend", age=30, mood=Mood.CALM, tags=[], maybe_tags=None,
                              pet=None, best_friend=None),
    }
    return Person(**(fields | changes))


PEOPLE: list[Person] = []


@strawberry.type
class Query:
    @strawberry.field
    async def edges(self) -> list[Edge]:
        return [Edge(cursor=f"c{i}", node=p) for i, p in enumerate(PEOPLE)]


def run(query: str, variables: dict[str, Any] | None = None, *, shortcut: bool) -> Any:
    schema = strawberry.Schema(query=Query, execution_context_class=PlainDataExecution if shortcut else None)
    result = asyncio.run(schema.execute(query, variable_values=variables))
    errors = [(e.message, e.path, [(loc.line, loc.column) for loc in e.locations or ()]) for e in result.errors or ()]
    return result.data, errors


QUERIES = [
    "{ edges { cursor node { id name age mood tags { slug label } maybeTags { slug } } } }",
    "{ edges { __typename c: cursor node { ... on Person { n: name } ...F bestFriend { name bestFriend { id } } } } }"
    " fragment F on Person { tags { label __typename } age }",
    "query($with: Boolean!) { edges { node { name @include(if: $with) age @skip(if: $with) tags { slug } } } }",
    "{ edges { node { name shout(times: 2) pet { name legs } } } }",  # a resolver and an interface among plain data
    "{ edges { node { name } } edges { node { age } } }",  # one field asked twice: merged
]


@pytest.mark.parametrize("query", QUERIES)
def test_plain_selections_answer_as_graphql_core_does(query: str, monkeypatch: pytest.MonkeyPatch) -> None:
    PEOPLE[:] = [person(n) for n in range(7)]
    resolved_by_graphql_core = []
    plain = StrawberryGraphQLCoreExecutionContext.execute_field

    def counted(*args: Any) -> Any:
        resolved_by_graphql_core.append(args[3])
        return plain(*args)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_field", counted)
    for variables in ({"with": True}, {"with": False}):
        expected = run(query, variables, shortcut=False)
        everything = len(resolved_by_graphql_core)
        assert run(query, variables, shortcut=True) == expected
        assert expected[0]["edges"] and not expected[1]
        # The shortcut took over fields: graphql-core resolved only the rest (in the first query,
        # only the root field, which has a resolver).
        shortcut_left = len(resolved_by_graphql_core) - everything
        assert shortcut_left == 1 if query == QUERIES[0] else shortcut_left < everything
        resolved_by_graphql_core.clear()


def test_a_broken_value_is_reported_where_graphql_core_reports_it() -> None:
    # A null where the schema has none, a value that does not serialise, a missing attribute.
    PEOPLE[:] = [person(0), person(1, name=None), person(2), person(3, age="old"), person(4)]
    del PEOPLE[4].mood
    PEOPLE[2].tags[1].slug = None  # type: ignore[assignment]
    query = "{ edges { cursor node { name age mood tags { slug } } } }"
    expected = run(query, shortcut=False)
    assert expected[1], "the fixture must break something"
    assert run(query, shortcut=True) == expected


def test_a_parsed_document_run_again_answers_for_its_own_data_and_variables() -> None:
    # The parsed-document cache hands out one tree for a text: what was worked out for it once must
    # not carry one run's data, or one run's @include, into the next.
    known = Known()
    schema = strawberry.Schema(query=Query, execution_context_class=PlainDataExecution,
                               extensions=[lambda: KnownDocuments(known)])
    plain = "{ edges { node { name tags { slug } } } }"
    chosen = "query($with: Boolean!) { edges { node { name @include(if: $with) age } } }"
    for n in (2, 3, 2):
        PEOPLE[:] = [person(n)]
        assert asyncio.run(schema.execute(plain)).data == {
            "edges": [{"node": {"name": f"Person {n}", "tags": [{"slug": f"t{i}"} for i in range(n % 4)]}}]}
        for with_name in (True, False, True):
            found = asyncio.run(schema.execute(chosen, variable_values={"with": with_name})).data
            assert found == {"edges": [{"node": {"name": f"Person {n}", "age": 20 + n} if with_name
                                        else {"age": 20 + n}}]}
