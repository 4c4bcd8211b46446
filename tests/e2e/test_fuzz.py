"""schemathesis generates operations from the live schema (every query and mutation, with valid and
invalid arguments) and sends them to a real server, signed in and anonymous: no answer is a 500, and
no error leaks an unmasked internal failure. Bounded so that the suite stays short."""
import os
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode

from infra.settings import Settings
from tests.e2e.conftest import running_server, sign_up

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))  # per operation, mode and identity


def _problems(body: Any) -> list[str]:
    found = []
    for error in (body or {}).get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        if code in (None, "INTERNAL_SERVER_ERROR"):
            found.append(f"{code}: {error.get('message')}")
    return found


async def test_generated_operations_never_break_the_server(settings: Settings, migrated: None,
                                                          tmp_path: Path) -> None:
    with running_server(settings, tmp_path) as base:
        account = await sign_up(base)
        schema = schemathesis.graphql.from_url(f"{base}/graphql")
        seen: Counter[str] = Counter()
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert len(operations) > 20  # every root field of Query and Mutation
        for operation in operations:
            # Logging out or deleting the account would sign the fuzzer out of everything after it.
            if operation.label.split(".")[-1] in ("logOut", "logOutEverywhere", "deleteAccount"):
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for headers in ({"Authorization": f"Bearer {account.access_token}"}, {}):
                    _fuzz(operation, mode, headers, seen, failures)
        assert not failures, "\n".join(failures[:20])
        print(f"fuzzed {len(operations)} operations with {sum(seen.values())} requests")
        assert sum(seen.values()) >= len(operations) * 2, seen  # it really sent them


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str], seen: Counter[str],
          failures: list[str]) -> None:
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        seen[operation.label] += 1
        if response.status_code >= 500:
            failures.append(f"{operation.label}: HTTP {response.status_code} for {case.body!r}"[:500])
            return
        try:
            body = response.json()
        except ValueError:
            failures.append(f"{operation.label}: not JSON ({response.status_code}) for {case.body!r}"[:500])
            return
        failures.extend(f"{operation.label}: {p} for {case.body!r}"[:500] for p in _problems(body))

    run()


@pytest.mark.parametrize("body, expected", [
    ({"errors": [{"message": "x", "extensions": {"code": "BAD_USER_INPUT"}}]}, []),
    ({"errors": [{"message": "boom"}]}, ["None: boom"]),
    ({"errors": [{"message": "Internal", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
     ["INTERNAL_SERVER_ERROR: Internal"]),
])
def test_the_fuzzer_would_notice(body: dict[str, Any], expected: list[str]) -> None:
    assert _problems(body) == expected
