import importlib
from pathlib import Path

from graphql import GraphQLError, parse

import schema
from schema.errors import classify

ROOT = Path(__file__).resolve().parents[2]


def test_sdl_file_matches_the_code() -> None:
    # Frontends generate code from schema.graphql; regenerate it with `make schema` when this fails.
    assert (ROOT / "schema.graphql").read_text() == schema.sdl()


def test_our_packages_shadow_pypi_namesakes() -> None:
    for name in ("schema", "domain", "workers", "resolvers", "infra"):
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").resolve().parent == ROOT / name, name


def test_unexpected_errors_are_masked_with_an_id() -> None:
    node = parse("{ me { id } }").definitions[0]
    internal = classify(GraphQLError("db password is hunter2", [node], path=["me"],
                                     original_error=KeyError("hunter2")), hide_suggestions=False)
    assert "hunter2" not in internal.message
    assert internal.extensions is not None
    assert internal.extensions["code"] == "INTERNAL_SERVER_ERROR"
    assert internal.extensions["errorId"] in internal.message


def test_suggestions_hidden_in_production() -> None:
    error = GraphQLError("Cannot query field 'mee' on type 'Query'. Did you mean 'me'?")
    assert classify(error, hide_suggestions=True).message == "Cannot query field 'mee' on type 'Query'."
    assert (classify(error, hide_suggestions=False).extensions or {})["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_operation_names_cannot_grow_metrics_without_bound() -> None:
    from infra import metrics

    labels = {metrics.operation_label(f"op{i}") for i in range(metrics.MAX_OPERATION_NAMES + 50)}
    assert len(labels) <= metrics.MAX_OPERATION_NAMES + 1 and "other" in labels
    assert metrics.operation_label(None) in ("anonymous", "other")
