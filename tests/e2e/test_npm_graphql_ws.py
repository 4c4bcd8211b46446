"""The npm graphql-ws client, the one browser and React Native apps use, against live servers."""
import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import gql, sign_up, ws_url
from tests.node import node_bin, node_env, npm_command, npm_install, wheel_node

JS_DIR = Path(__file__).resolve().parent / "js"
UPDATE_NAME = """mutation($name: String!) { updateProfile(input: {displayName: $name}) {
  __typename ... on Me { displayName } ... on InputError { code } } }"""
LINE_TIMEOUT = 10.0  # seconds for the Node client to say anything: start-up plus a handshake
EVENT_WAIT = 2.0  # seconds for one update's event before updating again
UPDATE_TRIES = 4


@pytest.fixture(scope="module")
def node_modules() -> Path:
    return npm_install(JS_DIR)


@pytest.fixture
def without_path_node(monkeypatch: pytest.MonkeyPatch) -> str:
    """A PATH that holds only the venv's scripts, as on a machine where Node was never installed."""
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", venv_bin)
    assert shutil.which("node") is None and shutil.which("npm") is None
    return venv_bin


def test_node_without_node_on_path(without_path_node: str) -> None:
    assert node_bin() == wheel_node()
    env = node_env()
    version = subprocess.run([node_bin(), "--version"], env=env, capture_output=True, text=True, timeout=30,
                             check=False)
    assert version.returncode == 0 and version.stdout.startswith("v"), version
    npm = subprocess.run([*npm_command(), "--version"], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert npm.returncode == 0 and npm.stdout.strip()[0].isdigit(), npm


def test_npm_install_without_node_on_path(without_path_node: str, tmp_path: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy(JS_DIR / name, tmp_path / name)
    modules = npm_install(tmp_path)
    assert modules == tmp_path / "node_modules"
    assert (modules / "graphql-ws" / "package.json").is_file()
    # Installed and up to date: a second call leaves the tree alone.
    marker = modules / "left-alone"
    marker.touch()
    assert npm_install(tmp_path) == modules and marker.exists()
    # A changed lock makes it stale: `npm ci` starts from an empty node_modules.
    lock = tmp_path / "package-lock.json"
    lock.write_text(lock.read_text() + "\n")
    npm_install(tmp_path)
    assert not marker.exists() and (modules / "graphql-ws" / "package.json").is_file()


class NodeSubscriber:
    """subscribe.mjs in a child process; reads the JSON lines it prints."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    def transcript(self) -> str:
        return "node said:\n" + "\n".join(json.dumps(line) for line in self.lines)

    async def next_line(self, timeout: float) -> dict[str, Any] | None:
        """The next line, or None when the client has said all it will say (exit or timeout)."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            return None
        if not raw:
            return None
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        # stderr shares the pipe: a warning or a crash's stack trace is kept as text.
        line = parsed if isinstance(parsed, dict) else {"type": "output", "text": raw.decode().rstrip()}
        self.lines.append(line)
        return line

    async def wait_for(self, kind: str, timeout: float) -> dict[str, Any] | None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            line = await self.next_line(left)
            if line is None or line["type"] == kind:
                return line
        return None

    async def rest(self) -> list[dict[str, Any]]:
        """Everything until the client exits."""
        while await self.next_line(LINE_TIMEOUT) is not None:
            pass
        await asyncio.wait_for(self.proc.wait(), LINE_TIMEOUT)
        return self.lines


@asynccontextmanager
async def node_subscriber(
    base: str, token: str, events: int = 1, timeout: float = 15.0,
) -> AsyncIterator[NodeSubscriber]:
    # stderr into the same pipe: one that nobody read could fill up and stall node.
    proc = await asyncio.create_subprocess_exec(
        node_bin(), JS_DIR / "subscribe.mjs", ws_url(base), token, str(events), str(int(timeout * 1000)),
        cwd=JS_DIR, env=node_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield NodeSubscriber(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_npm_client_hears_a_profile_change_made_on_another_server(
    api_servers: list[str], node_modules: Path,
) -> None:
    listening, writing = api_servers
    account = await sign_up(listening)
    async with node_subscriber(listening, account.access_token) as node:
        connected = await node.wait_for("connected", LINE_TIMEOUT)
        assert connected is not None, node.transcript()
        # connection_ack comes before the subscribe message reaches the server, and the protocol
        # acknowledges no subscription: an update sent in between has no listener yet. So update
        # again, with a new name, until one event arrives.
        names: list[str] = []
        event = None
        for attempt in range(UPDATE_TRIES):
            names.append(f"Seen from Node {attempt}")
            updated = await gql(writing, UPDATE_NAME, {"name": names[-1]}, account.access_token)
            assert updated["data"]["updateProfile"] == {"__typename": "Me", "displayName": names[-1]}, updated
            event = await node.wait_for("next", EVENT_WAIT)
            if event is not None:
                break
        assert event is not None, f"no event after {len(names)} updates\n{node.transcript()}"
        payload = event["payload"]
        assert "errors" not in payload, node.transcript()
        assert payload["data"]["myEvents"]["__typename"] == "ProfileChanged"
        # The server reads the profile as it delivers the event: the latest name sent by then.
        assert payload["data"]["myEvents"]["me"]["displayName"] in names, node.transcript()
        await node.rest()
        assert node.proc.returncode == 0, node.transcript()


@pytest.mark.parametrize("bad_token", ["tampered", "not-a-jwt"])
async def test_npm_client_with_a_wrong_token_is_refused(
    api: str, node_modules: Path, bad_token: str,
) -> None:
    account = await sign_up(api)
    if bad_token == "tampered":
        header, payload, signature = account.access_token.split(".")
        bad_token = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    async with node_subscriber(api, bad_token) as node:
        lines = await node.rest()
    kinds = [line["type"] for line in lines]
    assert "connected" not in kinds and "next" not in kinds, node.transcript()
    # 4401 is final for graphql-ws (it would retry 4403 with the same token); the reason tells the
    # client whether refreshing can help. graphql-ws hands the close event to the sink as its error.
    closed = [line for line in lines if line["type"] == "closed"]
    assert closed and closed[0]["code"] == 4401, node.transcript()
    assert closed[0]["reason"] == "TOKEN_INVALID", node.transcript()
    errors = [line["error"] for line in lines if line["type"] == "error"]
    assert errors and errors[0]["code"] == 4401, node.transcript()
    assert node.proc.returncode == 1, node.transcript()
    # Rejected outright: the client did not have to wait for its own timeout.
    assert "timeout" not in kinds
