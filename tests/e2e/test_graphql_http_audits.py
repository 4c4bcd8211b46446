"""The GraphQL over HTTP spec, checked by graphql-http's own audit suite from a Node process."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.node import node_bin, node_env, npm_install

JS_DIR = Path(__file__).resolve().parent / "js"
AUDIT_TIMEOUT = 60


@pytest.fixture(scope="module")
def node_modules() -> Path:
    return npm_install(JS_DIR)


def test_every_graphql_http_audit_passes(api: str, node_modules: Path) -> None:
    run = subprocess.run(
        [node_bin(), JS_DIR / "audit.mjs", f"{api}/graphql"], cwd=JS_DIR, env=node_env(),
        capture_output=True, text=True, timeout=AUDIT_TIMEOUT, check=False,
    )
    assert run.returncode == 0, f"audit.mjs exited {run.returncode}:\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout)
    assert results, "graphql-http ran no audit"  # an empty list would pass the check below
    # Not only the MUSTs: SHOULDs ("warn") and MAYs ("notice") are behaviour that clients count on too.
    failures = [f"{r['id']} {r['name']} [{r['status']}, HTTP {r['httpStatus']}]: {r['reason']}"
                for r in results if r["status"] != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} audits failed:\n" + "\n".join(failures)
