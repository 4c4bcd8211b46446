"""Chat archive: messages per second through the aggregator (write-ahead log, windows) and the archive
writer (S3 objects, index) against the smallest real path for the same entries, and S3 requests.

The baseline reads the same entries from the same number of stream partitions with raw XREADGROUP
and XACK and appends the same bytes to a file, fsynced at most ~100 times a second as the log is.
Both run in this process, one after the other, in each round. Both clocks start when the entries
are first read (the baseline's first XREADGROUP, the aggregator's first batch), so the workers' start
(leases, fences recorded in PostgreSQL) is left out and reported apart (workers_start_s, and
msgs_per_s_from_start with it). The last line of stdout is JSON.

    .venv/bin/python bench/archive.py [--messages 100000] [--chats 1000] [--partitions 16] [--rounds 3]
"""

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

# tests/ is not an installed package, and the script may be started from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis

from domain.chat import Message
from domain.ids import new_id
from infra.archive import S3ChatArchive, S3Objects
from infra.chat_codec import encode_message
from infra.db import migrate, open_pool
from infra.redis_client import open_redis
from infra.settings import Settings
from infra.streams import StreamSpec, ensure_groups
from infra.wal import SYNC_INTERVAL
from tests.archiving import Stage, archive_s3, until
from tests.services import test_services
from workers.aggregator import Aggregator, pos

TARGETS = {"ratio_wal": 0.5, "s3_puts_per_100k_msgs_vs_bound": 1.0, "s3_gets_per_history_page": 2}
WINDOW_MS = 600_000  # the default window: every round's entries fall in one or two of them
PAGE = 20


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def messages(count: int, chats: int) -> list[bytes]:
    ids = [uuid.uuid4() for _ in range(chats)]
    at = datetime.now(UTC).replace(microsecond=0)
    sender, other = uuid.uuid4(), uuid.uuid4()
    out = []
    for n in range(count):
        chat_id = ids[n % chats]
        text = f"message {n} about the weekend, the coffee place and whatever else comes up"
        message = Message(new_id(), chat_id, n // chats + 1, sender, other, f"c{n}", text, at)
        out.append(encode_message(message).encode())
    return out


async def fill(redis: aioredis.Redis, spec: StreamSpec, raws: list[bytes]) -> dict[int, list[str]]:
    """What the chat log's send script appends, pipelined; the entry ids of each partition."""
    ids: dict[int, list[str]] = {}
    for start in range(0, len(raws), 5000):
        chunk = raws[start:start + 5000]
        parts = [spec.partition_of(json.loads(raw)["chat"]) for raw in chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for partition, raw in zip(parts, chunk, strict=True):
                pipe.xadd(spec.key(partition), {"m": raw})
            got = await pipe.execute()
        for partition, entry in zip(parts, got, strict=True):
            ids.setdefault(partition, []).append(entry.decode() if isinstance(entry, bytes) else str(entry))
    return ids


class Timed(Aggregator):
    """Notes when the first batch reaches the aggregator: the baseline's clock starts at its first read,
    and the workers' start (leases, fences recorded in PostgreSQL) is no part of the steady work."""

    first: float | None = None

    async def __call__(self, partition: int, fence: int, batch: list[tuple[str, bytes]]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        await super().__call__(partition, fence, batch)


class Counting:
    """Counts the S3 requests a client sends, by operation."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[str, int] = {}
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, request: Any, **kwargs: Any) -> None:
        name = str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]
        self.counts[name] = self.counts.get(name, 0) + 1


async def run_archive(settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis, raws: list[bytes],
                      partitions: int, prefix: str, wal_dir: Path) -> dict[str, Any]:
    s3 = archive_s3(settings)
    counting = Counting(s3)
    stage = Stage(settings, pool, redis, prefix, partitions, s3)
    await stage.prepare()
    ids = await fill(redis, stage.chats, raws)
    spanned = len({int(i.split("-")[0]) // WINDOW_MS for got in ids.values() for i in got})  # windows
    # The windows' time is up as soon as their entries are in: what is measured is the work, not a wait.
    ahead = WINDOW_MS / 1000 + 5
    ends = await stage.stream_ends()  # nothing is added while the workers run

    async def archived_all() -> bool:
        # One query a look, often: what the run's own polling costs and waits is not the pipeline's.
        positions = await stage.index.positions()
        return all(p in positions and pos(positions[p].last_entry) >= pos(end) for p, end in ends.items())

    started = time.perf_counter()
    async with stage.writing(), stage.aggregating(wal_dir, WINDOW_MS, clock=lambda: time.time() + ahead,
                                                  kind=Timed) as aggregator:
        await until(archived_all, "the archive to catch up", timeout=600, every=0.01)
        done = time.perf_counter()
    first = cast(Timed, aggregator).first or started
    puts = counting.counts.get("PutObject", 0)
    counting.counts.clear()
    gets = await history_gets(stage, [json.loads(raw)["chat"] for raw in raws[:200]], counting)
    return {"per_s": len(raws) / (done - first), "per_s_from_start": len(raws) / (done - started),
            "start_s": first - started, "puts": puts, "bound": partitions * spanned, "gets": gets}


async def history_gets(stage: Stage, chats: list[str], counting: Counting) -> list[int]:
    reader = S3ChatArchive(stage.index, S3Objects(stage.s3, stage.settings.s3_bucket), stage.keys.sealer)
    per_page: list[int] = []
    for chat in dict.fromkeys(chats):
        before: int | None = None
        while True:
            counting.counts.clear()
            got, more = await reader.page(uuid.UUID(chat), None, before, PAGE, True)
            per_page.append(counting.counts.get("GetObject", 0))
            if not got or not more:
                break
            before = got[0].seq
    return per_page


async def run_baseline(settings: Settings, redis: aioredis.Redis, raws: list[bytes], partitions: int,
                       prefix: str, path: Path) -> float:
    spec = StreamSpec("chats", partitions, prefix, ("raw",))
    await ensure_groups(redis, spec)
    await fill(redis, spec, raws)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    state = {"written": 0, "synced": 0, "last": 0.0}
    flushing: list[asyncio.Future[None]] = []

    async def flush() -> None:
        pause = state["last"] + SYNC_INTERVAL - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        upto, state["last"] = state["written"], time.monotonic()
        await asyncio.to_thread(os.fsync, fd)
        state["synced"] = max(state["synced"], upto)
        flushing.clear()

    async def durable(target: int) -> None:
        while state["synced"] < target:
            if not flushing:
                flushing.append(asyncio.ensure_future(flush()))
            await asyncio.shield(flushing[0])

    async def partition(p: int) -> None:
        key = spec.key(p)
        while True:
            reply: Any = await redis.xreadgroup("raw", "bench", {key: ">"}, count=1000)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
            if not entries:
                return
            data = b"".join(fields[b"m"] for _, fields in entries)
            os.write(fd, data)
            state["written"] += len(data)
            await durable(int(state["written"]))
            await redis.xack(key, "raw", *[entry for entry, _ in entries])

    started = time.perf_counter()
    await asyncio.gather(*(partition(p) for p in range(partitions)))
    elapsed = time.perf_counter() - started
    os.close(fd)
    return len(raws) / elapsed


async def bench(settings: Settings, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    raws = messages(args.messages, args.chats)
    redis = open_redis(settings.redis_url)
    rounds: list[dict[str, Any]] = []
    try:
        async with open_pool(settings.database_url, max_size=8) as pool:
            for n in range(args.rounds):
                base = await run_baseline(settings, redis, raws, args.partitions,
                                          f"{settings.redis_prefix}raw{n}:", tmp / f"raw{n}.log")
                got = await run_archive(settings, pool, redis, raws, args.partitions,
                                        f"{settings.redis_prefix}arch{n}:", tmp / f"wal{n}")
                rounds.append({"baseline": base, **got})
                say(f"round {n + 1}: archive {got['per_s']:.0f} msgs/s ({got['per_s_from_start']:.0f} with the"
                    f" workers' start of {got['start_s']:.3f} s), baseline {base:.0f} msgs/s,"
                    f" {got['puts']} PUTs (bound {got['bound']}), GETs per page max {max(got['gets'])}")
                done = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*{n}:*", count=1000)]
                if done:
                    await redis.delete(*done)
    finally:
        await redis.aclose()
    best, best_base = max(r["per_s"] for r in rounds), max(r["baseline"] for r in rounds)
    puts, bound = max(r["puts"] for r in rounds), min(r["bound"] for r in rounds)
    pages = [g for r in rounds for g in r["gets"]]
    return {
        "msgs_per_s": round(best, 1), "baseline_msgs_per_s": round(best_base, 1),
        "ratio_wal": round(best / best_base, 3),
        "msgs_per_s_from_start": round(max(r["per_s_from_start"] for r in rounds), 1),
        "workers_start_s": round(max(r["start_s"] for r in rounds), 3),
        "s3_puts_per_100k_msgs": round(puts * 100_000 / args.messages, 1),
        "s3_puts_bound_per_100k_msgs": round(bound * 100_000 / args.messages, 1),
        "s3_puts_per_100k_msgs_vs_bound": round(puts / bound, 3),
        "s3_gets_per_history_page": max(pages), "s3_gets_per_history_page_mean": round(sum(pages) / len(pages), 2),
        "history_pages": len(pages),
        "rounds": [{"archive": round(r["per_s"], 1), "archive_from_start": round(r["per_s_from_start"], 1),
                    "baseline": round(r["baseline"], 1), "puts": r["puts"], "bound": r["bound"]} for r in rounds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement; the best counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="nf-bench-") as tmp, test_services(Path(tmp)) as services:
        settings = Settings(
            data_dir=Path(tmp) / "data", database_url=services.database_url, redis_url=services.redis_url,
            redis_prefix=services.redis_prefix, s3_endpoint_url=services.s3_endpoint_url,
            s3_access_key=services.s3_access_key, s3_secret_key=services.s3_secret_key,
            s3_bucket=services.s3_bucket, secret_key=secrets.token_urlsafe(48),
        )
        asyncio.run(migrate(settings.database_url))
        figures = asyncio.run(bench(settings, args, Path(tmp)))
    met = (figures["ratio_wal"] >= TARGETS["ratio_wal"]
           and figures["s3_puts_per_100k_msgs_vs_bound"] <= TARGETS["s3_puts_per_100k_msgs_vs_bound"]
           and figures["s3_gets_per_history_page"] <= TARGETS["s3_gets_per_history_page"])
    figures |= {"targets": TARGETS, "met": met, "cpus": os.cpu_count(),
                "settings": {"messages": args.messages, "chats": args.chats, "partitions": args.partitions,
                             "rounds": args.rounds, "window_ms": WINDOW_MS}}
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
