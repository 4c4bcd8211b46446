import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from infra.settings import ConfigError, Settings

log = logging.getLogger("newfriends")


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


# Written by `newfriends dev` in its data directory: where each of its workers serves metrics.
WORKER_METRICS = "worker-metrics"


def _data_dir() -> Path:
    return Path(os.environ.get("NEWFRIENDS_DATA_DIR", ".data"))


def _settings() -> Settings:
    settings = Settings.from_env()
    return settings if settings.production else settings.with_dev_secret()


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from infra.app import create_app
    from infra.ws_protocol import LeanWebSocketProtocol

    settings = _settings()
    if args.port is not None:
        settings = replace(settings, port=args.port)
    trusted = ",".join(settings.trusted_proxies)
    uvicorn.run(
        create_app(settings), host=args.host or settings.host, port=settings.port,
        # Forwarding headers count only from configured proxies; anyone else could forge them.
        proxy_headers=bool(trusted), forwarded_allow_ips=trusted or "",
        # Protocol-level pings serve both GraphQL subprotocols (the legacy one has no ping a client
        # must answer): a peer silent past the timeout is dropped, and its subscriptions end with it.
        ws_ping_interval=_seconds("WS_PING_SECONDS", 20), ws_ping_timeout=_seconds("WS_PING_TIMEOUT_SECONDS", 20),
        # uvicorn's sans-I/O protocol (pings are timers, not tasks), with less kept per socket.
        ws=LeanWebSocketProtocol,
        # An idle connection outlives any load balancer's idle timeout (60 s on the common ones): if
        # the server closed first, a request the balancer sent on it at that moment would be reset.
        timeout_keep_alive=int(_seconds("HTTP_KEEPALIVE_SECONDS", 75)),
        timeout_graceful_shutdown=10, ws_max_size=settings.max_body_bytes,
        log_level=os.environ.get("LOG_LEVEL", "info").lower(), access_log=False,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from infra.db import migrate

    applied = asyncio.run(migrate(_settings().database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers import registry

    workers = registry()
    if args.name not in workers:
        print(f"unknown worker {args.name!r}; known: {', '.join(sorted(workers))}", file=sys.stderr)
        return 2
    settings = _settings()
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if port:
        from prometheus_client import start_http_server

        from infra.metrics import REGISTRY

        # Workers serve no HTTP of their own: a tiny exporter thread lets Prometheus scrape their
        # lag, pending entries and dead letters.
        start_http_server(port, addr=settings.host, registry=REGISTRY)
    asyncio.run(workers[args.name](settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.demo import DEMO_EMAIL, DEMO_PASSWORD, load

    added = asyncio.run(load(_settings(), args.size, seed=args.seed, if_empty=args.if_empty))
    if added:
        print(f"added {added} demo people; log in as {DEMO_EMAIL} with the password {DEMO_PASSWORD!r}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from infra.simulator import ApiError, Options, simulate

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the summary
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    url = args.url or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    metrics = args.metrics_url
    if not metrics and not args.url:  # `make run` here: its workers' exporters, as it lists them
        listed = _data_dir() / WORKER_METRICS
        metrics = listed.read_text().split() if listed.exists() else []
    options = Options(url=url, users=args.users, seconds=seconds, rate=args.rate, seed=args.seed,
                      drain_seconds=args.drain_seconds, metrics_urls=tuple(metrics))
    try:
        summary = asyncio.run(simulate(options))
    except ApiError as exc:
        hint = (" (every simulated person comes from this one address: start the server with"
                " TRUSTED_PROXIES=127.0.0.1, as `make run` does, so that each counts as the address it forwards)"
                if exc.code == "RATE_LIMITED" else "")
        if exc.code == "TRANSPORT":
            cause = exc.__cause__
            hint = f" (nothing answered at {url}: {type(cause).__name__ if cause else 'no answer'}; is the service" \
                   " running, on this PORT?)"
        print(f"could not set up the simulated people: {exc.code}{hint}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0 if summary.ok else 1


def cmd_dev(args: argparse.Namespace) -> int:
    from infra.devstack import EmbeddedStack

    settings = _settings()
    missing = {"postgres": not settings.database_url, "redis": not settings.redis_url,
               "s3": not settings.s3_endpoint_url}
    cdn_bucket = settings.s3_bucket if missing["s3"] and not settings.photo_cdn_url else None
    with EmbeddedStack(settings.data_dir / "services", **missing, cdn_bucket=cdn_bucket) as services:
        env = dict(os.environ)
        if missing["postgres"]:
            env["DATABASE_URL"] = services.database_url
        if missing["redis"]:
            env["REDIS_URL"] = services.redis_url
        if missing["s3"]:
            env.update(S3_ENDPOINT_URL=services.s3_endpoint_url, S3_ACCESS_KEY=services.s3_access_key,
                       S3_SECRET_KEY=services.s3_secret_key)
        if services.cdn_url:
            env["PHOTO_CDN_URL"] = services.cdn_url
        env["NEWFRIENDS_SECRET_KEY"] = settings.secret_key
        env["NEWFRIENDS_DATA_DIR"] = str(settings.data_dir)
        # A proxy on this machine (or `newfriends simulate`, which forwards an address per simulated
        # person) may say whom it speaks for, as uvicorn allows by default; `serve` trusts only
        # what TRUSTED_PROXIES names.
        env.setdefault("TRUSTED_PROXIES", "127.0.0.1")
        return _supervise(settings, env)


def _ready(settings: Settings) -> bool:
    import urllib.request

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/readyz", timeout=0.5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _supervise(settings: Settings, env: dict[str, str]) -> int:
    from workers import registry

    exe = [sys.executable, "-m", "infra.cli"]
    if subprocess.run([*exe, "migrate"], env=env, check=False).returncode != 0:
        return 1
    # Only into an empty database: a restart never adds people, and real data is never mixed in.
    if env.get("NEWFRIENDS_DEMO", "1") != "0":
        subprocess.run([*exe, "demo", "--if-empty"], env=env, check=False)
    commands = {"api": [*exe, "serve"], **{f"worker:{n}": [*exe, "worker", n] for n in sorted(registry())}}
    envs = {name: env for name in commands}
    if not env.get("METRICS_PORT"):
        # Each worker's metrics on a port of its own, listed where `newfriends simulate` looks.
        from infra.devstack import free_port

        ports = {name: free_port() for name in commands if name.startswith("worker:")}
        envs |= {name: {**env, "METRICS_PORT": str(port)} for name, port in ports.items()}
        (settings.data_dir / WORKER_METRICS).write_text(
            "".join(f"http://127.0.0.1:{port}/metrics\n" for port in ports.values()))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = {name: subprocess.Popen(cmd, env=envs[name]) for name, cmd in commands.items()}
    url = f"http://{settings.host}:{settings.port}/graphql"
    print("\n  newfriends is starting (Ctrl-C stops everything)\n", flush=True)
    announced = False
    restarts: dict[str, float] = {}
    while not stopping:
        time.sleep(0.5)
        # The URL only once the API answers: a person who opens it at once must find it working.
        if not announced and _ready(settings):
            announced = True
            print(f"\n  newfriends is ready: GraphiQL at {url}\n  (Ctrl-C stops everything)\n", flush=True)
        for name, child in list(children.items()):
            if child.poll() is not None and not stopping:
                # A crashed process comes back, but not in a tight loop.
                if time.monotonic() - restarts.get(name, 0) < 5:
                    continue
                log.warning("%s exited with %s; restarting", name, child.returncode)
                restarts[name] = time.monotonic()
                children[name] = subprocess.Popen(commands[name], env=envs[name])
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = argparse.ArgumentParser(prog="newfriends", description="newfriends backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one API process (GraphQL over HTTP and WebSocket)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)
    worker = sub.add_parser("worker", help="run one background worker")
    worker.add_argument("name")
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (METRICS_PORT)")
    worker.set_defaults(func=cmd_worker)
    demo = sub.add_parser("demo", help="add a demo population (people at real cities, with real addresses)")
    demo.add_argument("--size", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--if-empty", action="store_true", help="only when the database has no users yet")
    demo.set_defaults(func=cmd_demo)
    sim = sub.add_parser("simulate", help="drive a running service through its public API as many people at once")
    sim.add_argument("--url", help="the service's base URL (default http://127.0.0.1:$PORT, else port 8000)")
    sim.add_argument("--users", type=int, default=50)
    length = sim.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=1.0)
    length.add_argument("--seconds", type=float)
    sim.add_argument("--rate", type=float, help="operations a second, everyone together (default: users / 2;"
                     " never more than one a second per person)")
    sim.add_argument("--drain-seconds", type=float, default=15.0,
                     help="after the last operation, how long to keep waiting once nothing more arrives"
                     " (at most 8 times that in all)")
    sim.add_argument("--metrics-url", action="append", default=[],
                     help="another Prometheus endpoint to read archive figures from (a worker's --metrics-port)")
    sim.add_argument("--seed", type=int)
    sim.set_defaults(func=cmd_simulate)
    sub.add_parser("dev", help="everything in one process group, with embedded services when no URLs are set"
                   ).set_defaults(func=cmd_dev)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
