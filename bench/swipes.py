"""Swipe throughput: the like mutation through one API process, and the swipe writer.

Every figure comes with a raw baseline measured in the same run, on the same (shared, noisy)
machine: only the ratios are meant to be compared across runs. The last line of stdout is JSON.

    .venv/bin/python bench/swipes.py [--seconds 6] [--rounds 3] [--swipes 100000]
"""

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing as mp
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

# tests/ is not an installed package, and the script may be started from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx
import psutil
import uvloop

from domain.ids import new_id
from domain.model import Principal
from domain.swipes import Direction, Swipe
from infra.broadcast import make_broadcast
from infra.db import migrate, open_pool
from infra.events import UserChannels
from infra.pg_fences import PgFences
from infra.redis_client import open_redis
from infra.security import JwtSigner
from infra.settings import Settings
from infra.streams import PartitionedConsumer, StreamSpec, ensure_groups
from infra.swipe_queue import SWIPE_WRITER, RedisSwipeQueue, decode_fields, encode, swipes_spec
from tests.e2e.conftest import running_server
from tests.factories import make_users
from tests.services import test_services
from workers.swipe_writer import BATCH_SIZE, GC_THRESHOLD, SwipeWriter

TARGETS = {"ratio_api": 0.6, "ratio_writer": 0.5}
LIKE = ('mutation($id: ID!) { like(userId: $id) { __typename ... on Swipe { direction person { id } }'
        ' ... on Error { code } } }')
NOOP = "mutation { benchNoop }"
WARMUP_S = 2.0
WRITER_POOL = 4  # as workers/swipe_writer.main
RELATION_TABLES = ("swipes", "matches", "user_matches", "super_likes_received")

log = logging.getLogger("bench")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout is kept for the figures


# -- load generator (one process each, so the client side is not what we measure) ----------------

@dataclass(frozen=True)
class Load:
    base: str
    tokens: list[str]
    # (token index, target id) per like request, or None: benchNoop with tokens in turn
    likes: list[tuple[int, str]] | None
    concurrency: int


@dataclass(frozen=True)
class LoadResult:
    done: int  # successful requests completed inside the window
    failed: int
    exhausted: bool  # ran out of distinct pairs before the window ended: the figure is too low


Window = Any  # multiprocessing.Array("d", 2): time.monotonic() bounds, one clock for all processes on Linux


def _client_main(load: Load, ready: "mp.Queue[int]", go: MpEvent, window: Window,
                 out: "mp.Queue[LoadResult]") -> None:
    try:
        import sniffio  # noqa: F401
    except ImportError:
        # httpcore tries this import on every request, and a failed import is searched for along
        # sys.path each time: a fifth of the client's CPU. None makes it fail at once.
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    out.put(uvloop.run(_drive(load, ready, go, window)))


async def _drive(load: Load, ready: "mp.Queue[int]", go: MpEvent, window: Window) -> LoadResult:
    # One client per request in flight: httpx's shared pool costs more CPU per request the more
    # connections it holds (1.9 ms at 24, 3.9 ms at 48, against 0.8 ms for a client of its own).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=load.base, limits=limits, timeout=30) for _ in range(load.concurrency)]
    headers = [{"authorization": f"Bearer {t}", "content-type": "application/json"} for t in load.tokens]
    noop = json.dumps({"query": NOOP}).encode()
    jobs = iter(range(len(load.likes) if load.likes is not None else sys.maxsize))
    done = failed = 0
    exhausted = False
    try:
        # Opens the keep-alive connections before the clock starts.
        await asyncio.gather(*(client.get("/healthz") for client in clients))
        ready.put(os.getpid())
        await asyncio.to_thread(go.wait)
        measure_from, measure_until = window[0], window[1]

        async def one_at_a_time(client: httpx.AsyncClient) -> None:
            nonlocal done, failed, exhausted
            while time.monotonic() < measure_until:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    return
                wanted: object
                if load.likes is None:
                    token, body, field, wanted = job % len(headers), noop, "benchNoop", True
                else:
                    token, target = load.likes[job]
                    body = json.dumps({"query": LIKE, "variables": {"id": target}}).encode()
                    field, wanted = "like", "Swipe"
                response = await client.post("/graphql", content=body, headers=headers[token])
                finished = time.monotonic()
                ok = response.status_code == 200 and _answer(response.content, field) == wanted
                if measure_from <= finished < measure_until:
                    done += ok
                failed += not ok
                if not ok and failed <= 3:
                    log.error("unexpected answer: %s %s", response.status_code, response.text[:500])

        await asyncio.gather(*(one_at_a_time(client) for client in clients))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return LoadResult(done, failed, exhausted)


def _answer(content: bytes, field: str) -> Any:
    value = (json.loads(content).get("data") or {}).get(field)
    return value.get("__typename") if isinstance(value, dict) else value


@dataclass(frozen=True)
class Phase:
    per_s: float
    server_cpu_s: float
    server_util: float  # server CPU seconds per wall second: ~1.0 when one process has a core to itself
    client_util: float


def run_phase(base: str, server: psutil.Process, tokens: list[str], likes: list[tuple[int, str]] | None,
              clients: int, concurrency: int, seconds: float) -> Phase:
    ctx = mp.get_context("spawn")  # no forking of a process that holds threads and event loops
    ready: mp.Queue[int] = ctx.Queue()
    out: mp.Queue[LoadResult] = ctx.Queue()
    go = ctx.Event()
    window = ctx.Array("d", 2)
    shares = [likes[i::clients] for i in range(clients)] if likes is not None else [None] * clients
    procs = [ctx.Process(target=_client_main, daemon=True,
                         args=(Load(base, tokens, share, concurrency // clients), ready, go, window, out))
             for share in shares]
    for proc in procs:
        proc.start()
    pids = [ready.get(timeout=60) for _ in procs]
    client_procs = [psutil.Process(pid) for pid in pids]
    start_at = time.monotonic()
    window[0], window[1] = start_at + WARMUP_S, start_at + WARMUP_S + seconds
    go.set()
    _sleep_until(window[0])
    cpu0, clients0 = _cpu(server), sum(_cpu(p) for p in client_procs)
    _sleep_until(window[1])
    cpu1, clients1 = _cpu(server), sum(_cpu(p) for p in client_procs)
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    if any(r.exhausted for r in results):
        raise RuntimeError("the load generators ran out of distinct pairs; raise --max-rate")
    failed = sum(r.failed for r in results)
    if failed:
        raise RuntimeError(f"{failed} requests failed")
    done = sum(r.done for r in results)
    return Phase(done / seconds, cpu1 - cpu0, (cpu1 - cpu0) / seconds, (clients1 - clients0) / seconds)


def _ms(phase: Phase) -> float | None:
    return round(1000 * phase.server_util / phase.per_s, 3) if phase.per_s else None


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# -- accounts ------------------------------------------------------------------------------------

async def make_accounts(settings: Settings, count: int) -> tuple[list[uuid.UUID], list[str]]:
    """Users with one session each and an access token for it, in bulk (signing in is not measured)."""
    signer = JwtSigner(settings.secret_key, 3 * 3600)
    now = datetime.now(UTC)
    expires = now + timedelta(days=1)
    async with open_pool(settings.database_url) as pool:
        users = [user_id for user_id, _ in await make_users(pool, count)]
        sessions = [(user_id, new_id()) for user_id in users]
        await pool.copy_records_to_table(
            "sessions", columns=["user_id", "id", "refresh_hash", "created_at", "refreshed_at", "expires_at"],
            records=[(u, s, secrets.token_bytes(32), now, now, expires) for u, s in sessions],
        )
    tokens = [signer.issue(Principal(u, s, expires), now)[0] for u, s in sessions]
    return users, tokens


def like_pairs(users: list[uuid.UUID], start: int, count: int) -> list[tuple[int, str]]:
    # Request j: user j mod n likes the user k places after them, k = j div n + 1: every pair is new,
    # and consecutive requests come from different users, as from many phones.
    n = len(users)
    if start + count > n * (n - 1):
        raise ValueError("not enough users for that many distinct pairs")
    return [(j % n, str(users[(j % n + j // n + 1) % n])) for j in range(start, start + count)]


# -- the API ------------------------------------------------------------------------------------

def bench_api(settings: Settings, log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    users, tokens = asyncio.run(make_accounts(settings, args.users))
    env = {"LIKES_PER_DAY": str(10**9), "NEWFRIENDS_BENCH_NOOP": "1"}
    with running_server(settings, log_dir, **env) as base:
        port = base.rsplit(":", 1)[1]
        server = next(p for p in psutil.Process().children() if port in p.cmdline())
        # Enough pairs for the fastest rate this process could plausibly reach, per like phase.
        per_phase = int(args.max_rate * (WARMUP_S + args.seconds + 1))
        noops: list[Phase] = []
        likes: list[Phase] = []
        for round_ in range(args.rounds):
            noops.append(run_phase(base, server, tokens, None, args.clients, args.concurrency, args.seconds))
            pairs = like_pairs(users, round_ * per_phase, per_phase)
            likes.append(run_phase(base, server, tokens, pairs, args.clients, args.concurrency, args.seconds))
            say(f"api round {round_ + 1}: noop {noops[-1].per_s:.0f}/s (server {noops[-1].server_util:.2f} cpu,"
                f" clients {noops[-1].client_util:.2f}), like {likes[-1].per_s:.0f}/s"
                f" (server {likes[-1].server_util:.2f} cpu, clients {likes[-1].client_util:.2f})")
    # Best of the rounds: on a shared machine noise only ever slows a run down.
    best_noop, best_like = max(n.per_s for n in noops), max(lk.per_s for lk in likes)
    per_core = max(lk.per_s * args.seconds / lk.server_cpu_s for lk in likes if lk.server_cpu_s > 0)
    # What ratio_api tends to when the server alone is the limit; the best throughputs may come from
    # different moments of a noisy run, their server CPU per request hardly moves.
    cpu_ratio = min(_ms(n) or 0.0 for n in noops) / min(_ms(lk) or float("inf") for lk in likes)
    return {
        "likes_per_s": round(best_like, 1), "noop_mutations_per_s": round(best_noop, 1),
        "ratio_api": round(best_like / best_noop, 3), "swipes_per_s_per_core": round(per_core, 1),
        "ratio_api_cpu": round(cpu_ratio, 3),
        "api_rounds": [{"noop_per_s": round(n.per_s, 1), "like_per_s": round(lk.per_s, 1),
                        "noop_server_cpu": round(n.server_util, 2), "like_server_cpu": round(lk.server_util, 2),
                        "noop_client_cpu": round(n.client_util, 2), "like_client_cpu": round(lk.client_util, 2),
                        # CPU per request is the least noise-sensitive figure of all
                        "noop_server_ms": _ms(n), "like_server_ms": _ms(lk)}
                       for n, lk in zip(noops, likes, strict=True)],
    }


# -- the writer ---------------------------------------------------------------------------------

def swipe_mix(count: int, users: int, seed: int) -> tuple[list[Swipe], int]:
    """Mostly dislikes, a quarter likes (a few super), a fifth of the likes answered: matches."""
    rng = random.Random(seed)
    people = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(users)]
    seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
    plan: list[tuple[uuid.UUID, uuid.UUID, Direction, bool]] = []
    liked: set[tuple[uuid.UUID, uuid.UUID]] = set()
    while len(plan) < count:
        user, target = rng.sample(people, 2)
        if (user, target) in seen:
            continue
        seen.add((user, target))
        like = rng.random() < 0.25
        plan.append((user, target, Direction.LIKE if like else Direction.DISLIKE, like and rng.random() < 0.04))
        if like:
            liked.add((user, target))
            if rng.random() < 0.2 and (target, user) not in seen and len(plan) < count:
                seen.add((target, user))
                liked.add((target, user))
                plan.append((target, user, Direction.LIKE, False))
    rng.shuffle(plan)
    start = datetime.now(UTC) - timedelta(hours=1)
    swipes = [Swipe(u, t, d, s, start + timedelta(milliseconds=i)) for i, (u, t, d, s) in enumerate(plan)]
    mutual = sum(1 for u, t in liked if (t, u) in liked) // 2
    return swipes, mutual


async def truncate(pool: asyncpg.Pool) -> None:
    present = [t for t in RELATION_TABLES if await pool.fetchval("SELECT to_regclass($1)", t)]
    await pool.execute(f"TRUNCATE {', '.join(present)}")


async def fill(redis: Any, spec: StreamSpec, swipes: Sequence[Swipe]) -> None:
    # What RedisSwipeQueue.enqueue leaves behind (the entry and its pending-map line, which the writer
    # cleans up), pipelined: one script call per swipe would take longer than the writer does.
    for start in range(0, len(swipes), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for swipe in swipes[start:start + 5000]:
                stream, entry = spec.key(spec.partition_of(str(swipe.user_id))), encode(swipe)
                pipe.xadd(stream, {"e": entry})
                pipe.hset(f"{stream}:pending:{swipe.user_id}", str(swipe.target_id), entry)
            await pipe.execute()


@dataclass(frozen=True)
class Rate:
    per_s: float
    cpu_us: float  # this process's CPU per row (not PostgreSQL's or Redis's): steadier than per_s


async def run_writer(settings: Settings, swipes: list[Swipe], mutual: int, prefix: str) -> Rate:
    spec = swipes_spec(prefix, settings.swipe_partitions)
    redis = open_redis(settings.redis_url)
    try:
        async with open_pool(settings.database_url, max_size=WRITER_POOL) as pool, \
                make_broadcast(settings.redis_url) as bus:
            await truncate(pool)
            await ensure_groups(redis, spec)
            await fill(redis, spec, swipes)
            queue = RedisSwipeQueue(redis, spec, undo_window=timedelta(seconds=settings.undo_window_seconds))
            fences = PgFences(pool, spec.scope)
            writer = SwipeWriter(pool, queue, UserChannels(bus, prefix), fences)
            consumer = PartitionedConsumer(redis, spec, SWIPE_WRITER, f"bench-{os.getpid()}", decode_fields,
                                           writer, fences, batch_size=BATCH_SIZE)
            started, cpu = time.perf_counter(), time.process_time()
            await consumer.run(until_idle=True)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            written = await pool.fetchval("SELECT count(*) FROM swipes")
            matches = await pool.fetchval("SELECT count(*) FROM matches WHERE notified")
            sides = await pool.fetchval("SELECT count(*) FROM user_matches")
            left = sum([await redis.xlen(spec.key(p)) for p in range(spec.partitions)])
            if (written, matches, sides) != (len(swipes), mutual, 2 * mutual):
                raise RuntimeError(f"writer applied {written} swipes, {matches} announced matches, {sides} sides;"
                                   f" expected {len(swipes)}, {mutual}, {2 * mutual}")
            if left:
                raise RuntimeError(f"{left} stream entries were not trimmed after being applied")
            return Rate(len(swipes) / elapsed, cpu / len(swipes) * 1e6)
    finally:
        await redis.aclose()


async def run_baseline(settings: Settings, swipes: list[Swipe]) -> Rate:
    columns = ["user_id", "target_id", "direction", "super_like", "created_at"]
    async with open_pool(settings.database_url, max_size=1) as pool:
        await truncate(pool)
        async with pool.acquire() as conn:
            started, cpu = time.perf_counter(), time.process_time()
            records = [(s.user_id, s.target_id, s.direction.value, s.super_like, s.at) for s in swipes]
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE swipes_in (user_id uuid, target_id uuid, direction text,"
                                   " super_like boolean, created_at timestamptz) ON COMMIT DROP")
                await conn.copy_records_to_table("swipes_in", columns=columns, records=records)
                listed = ", ".join(columns)
                status = await conn.execute(f"INSERT INTO swipes ({listed}) SELECT {listed} FROM swipes_in"
                                            " ON CONFLICT DO NOTHING")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if status != f"INSERT 0 {len(swipes)}":
            raise RuntimeError(f"baseline inserted {status!r}, expected {len(swipes)} rows")
    return Rate(len(swipes) / elapsed, cpu / len(swipes) * 1e6)


async def bench_writer(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    swipes, mutual = swipe_mix(args.swipes, max(2000, args.swipes // 10), seed=7)
    # A worker holds none of these; left to the collector, every full collection in the timed part
    # would walk them (a third of the writer's CPU at 100,000 swipes).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)  # as the worker process runs
    writer: list[Rate] = []
    baseline: list[Rate] = []
    for round_ in range(args.rounds):
        baseline.append(await run_baseline(settings, swipes))
        # A fresh prefix each time: fresh streams, groups and fences.
        writer.append(await run_writer(settings, swipes, mutual, f"{settings.redis_prefix}bench{round_}:"))
        say(f"writer round {round_ + 1}: writer {writer[-1].per_s:.0f} rows/s ({writer[-1].cpu_us:.1f} us CPU/row),"
            f" baseline {baseline[-1].per_s:.0f} rows/s ({baseline[-1].cpu_us:.1f} us CPU/row)"
            f" ({len(swipes)} swipes, {mutual} matches)")
    best_writer, best_baseline = max(w.per_s for w in writer), max(b.per_s for b in baseline)
    return {
        "writer_rows_per_s": round(best_writer, 1), "baseline_rows_per_s": round(best_baseline, 1),
        "ratio_writer": round(best_writer / best_baseline, 3),
        "writer_rounds": [{"writer": round(w.per_s, 1), "baseline": round(b.per_s, 1),
                           "writer_cpu_us_per_row": round(w.cpu_us, 2), "baseline_cpu_us_per_row": round(b.cpu_us, 2)}
                          for w, b in zip(writer, baseline, strict=True)],
        "swipes": len(swipes), "matches": mutual,
    }


# -- the whole run ------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per API phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement; the best counts")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight, all clients together")
    # One: server, client and Redis already share the two cores (and when neighbours are busy,
    # this VM gives about one in all), so a second generator only takes CPU from the server.
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--max-rate", type=float, default=4000, help="likes/s the pairs must last for")
    parser.add_argument("--swipes", type=int, default=100_000, help="swipes the writer applies per round")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-writer", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nf-bench-") as tmp, test_services(Path(tmp)) as services:
        settings = Settings(
            data_dir=Path(tmp) / "data", database_url=services.database_url, redis_url=services.redis_url,
            redis_prefix=services.redis_prefix, s3_endpoint_url=services.s3_endpoint_url,
            s3_access_key=services.s3_access_key, s3_secret_key=services.s3_secret_key,
            s3_bucket=services.s3_bucket, secret_key=secrets.token_urlsafe(48),
            argon2_time_cost=1, argon2_memory_kib=1024,
            # Rate limits stay on (their cost is part of the path) but never trip: one machine
            # plays thousands of users from one address.
            rate_limit_scale=1000.0,
        )
        asyncio.run(migrate(settings.database_url))
        if not args.skip_api:
            figures |= bench_api(settings, Path(tmp), args)
        if not args.skip_writer:
            figures |= asyncio.run(bench_writer(settings, args))
    met = all(figures[name] >= target for name, target in TARGETS.items() if name in figures)
    figures |= {"targets": TARGETS, "met": met, "cpus": os.cpu_count(),
                "settings": {"seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency,
                             "clients": args.clients, "users": args.users}}
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
