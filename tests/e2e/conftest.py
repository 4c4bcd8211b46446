import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.devstack import free_port
from infra.settings import Settings
from tests.conftest import settings_env

SIGN_UP = """
mutation($input: SignUpInput!) {
  signUp(input: $input) {
    __typename
    ... on AuthPayload { accessToken refreshToken me { id email } }
    ... on Error { code message }
  }
}"""

# Logs of the API processes still running, so a failing test shows what the servers said meanwhile.
_server_logs: list[Path] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for log in _server_logs:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            if tail.strip():
                report.sections.append((f"API log {log.name} (tail)", tail))
    return report


@contextmanager
def running_server(settings: Settings, log_dir: Path, **env: str) -> Iterator[str]:
    """A real `newfriends serve` process on a free port; yields its base URL."""
    port = free_port()
    log_path = log_dir / f"api-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve", "--port", str(port)],
            env={**os.environ, **settings_env(settings), "LOG_LEVEL": "WARNING", **env},
            stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    _server_logs.append(log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        _server_logs.remove(log_path)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def api_servers(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("api-logs")
    with running_server(settings, logs) as first, running_server(settings, logs) as second:
        yield [first, second]


@pytest.fixture(scope="session")
def api(api_servers: list[str]) -> str:
    return api_servers[0]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/graphql"


async def gql(
    base: str, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{base}/graphql", json={"query": query, "variables": variables or {}},
                                     headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Account:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str


async def sign_up(base: str, **overrides: Any) -> Account:
    email = overrides.pop("email", f"e2e-{uuid.uuid4().hex[:12]}@example.test")
    password = overrides.pop("password", "a long enough password")
    data = {"email": email, "password": password, "displayName": "Test Person", "birthDate": "1994-03-04",
            "gender": "WOMAN", **overrides}
    result = (await gql(base, SIGN_UP, {"input": data}))["data"]["signUp"]
    assert result["__typename"] == "AuthPayload", result
    return Account(result["me"]["id"], email, password, result["accessToken"], result["refreshToken"])
