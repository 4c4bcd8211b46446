"""The parse-and-validate cache: a document seen before is neither parsed nor validated again, and
what failed validation is never kept."""
import pytest
from strawberry.schema import schema as strawberry_schema

from schema import build_schema


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"parse": 0, "validate": 0}
    parse, validate = strawberry_schema.parse, strawberry_schema.validate_document

    def counting_parse(*args: object, **kwargs: object) -> object:
        calls["parse"] += 1
        return parse(*args, **kwargs)  # type: ignore[arg-type]

    def counting_validate(*args: object, **kwargs: object) -> object:
        calls["validate"] += 1
        return validate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(strawberry_schema, "parse", counting_parse)
    monkeypatch.setattr(strawberry_schema, "validate_document", counting_validate)
    return calls


async def test_a_document_seen_before_skips_parse_and_validation(counted: dict[str, int]) -> None:
    schema = build_schema()
    for _ in range(3):
        result = await schema.execute("{ __typename }")
        assert result.errors is None and result.data == {"__typename": "Query"}
    assert counted == {"parse": 1, "validate": 1}


async def test_a_document_that_failed_is_checked_every_time(counted: dict[str, int]) -> None:
    schema = build_schema()
    deep = "{ __typename nope }"
    for _ in range(2):
        result = await schema.execute(deep)
        assert result.errors
    assert counted["validate"] == 2
