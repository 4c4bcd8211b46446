"""Redis's own cost of the hot paths: server CPU microseconds per swipe and per chat message, and
bytes held per message, for sizing a Redis Cluster (docs/capacity.md).

A private redis-server (no other client on it, so its CPU counters are this run's alone) takes the
product's own code: swipes enqueued as the API does and consumed as the swipe writer does (read,
acknowledge, forget), messages appended as sendMessage does and consumed by the chat pusher
(publishing each one to its chat and both members) and by a reader standing in for the aggregator
(read and acknowledge). The last line of stdout is JSON.

    .venv/bin/python bench/redis_cost.py [--swipes 20000] [--messages 20000] [--chats 2000]
"""
import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# tests/ is not an installed package, and the script may be started from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from domain.chat import Message
from domain.ids import new_id
from domain.swipes import Direction, Quota, Swipe
from infra.broadcast import make_broadcast
from infra.chat_codec import encode_message
from infra.chat_log import CHAT_AGGREGATOR, CHAT_PUSHER, RedisChatLog, chats_spec
from infra.redis_client import open_redis
from infra.streams import PartitionedConsumer, ensure_groups
from infra.swipe_queue import SWIPE_WRITER, RedisSwipeQueue, decode_fields, swipes_spec
from tests.private_redis import PrivateRedis
from workers.chat_pusher import ChatPusher, decode_entry

PREFIX = "cost:"
CONCURRENCY = 64  # requests in flight, as several API processes would keep Redis busy


class NoFences:
    """Fences live in PostgreSQL; this run measures Redis alone, with one consumer per group."""

    async def floor(self, group: str, partition: int) -> int:
        return 0

    async def remember(self, group: str, partition: int, fence: int) -> None:
        return None


async def cpu_seconds(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def in_flight(calls: list[Any]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Any) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def swipe_costs(redis: aioredis.Redis, count: int) -> dict[str, float]:
    spec = swipes_spec(PREFIX, 16)
    await ensure_groups(redis, spec)
    queue = RedisSwipeQueue(redis, spec, undo_window=timedelta(minutes=5))
    users = [uuid.uuid4() for _ in range(max(count // 20, 1))]
    start = datetime.now(UTC)
    likes = [Quota("like", 100, timedelta(days=1))]
    swipes = [Swipe(users[i % len(users)], uuid.uuid4(), Direction.LIKE, False, start + timedelta(milliseconds=i))
              for i in range(count)]
    before = await cpu_seconds(redis)
    await in_flight([lambda s=s: queue.enqueue(s, likes, None) for s in swipes])
    enqueued = await cpu_seconds(redis)

    async def written(partition: int, fence: int, batch: list[tuple[str, str]]) -> None:
        await queue.forget(partition, [raw for _, raw in batch])

    writer = PartitionedConsumer(redis, spec, SWIPE_WRITER, "cost", decode_fields, written, NoFences(),
                                 batch_size=500)
    await writer.run(until_idle=True)
    consumed = await cpu_seconds(redis)
    return {"redis_cpu_us_per_swipe_enqueued": round((enqueued - before) / count * 1e6, 2),
            "redis_cpu_us_per_swipe_written": round((consumed - enqueued) / count * 1e6, 2)}


async def message_costs(redis: aioredis.Redis, url: str, count: int, chats: int) -> dict[str, float]:
    spec = chats_spec(PREFIX, 100)
    await ensure_groups(redis, spec)
    log = RedisChatLog(redis, spec, recent=1000)
    ids = [uuid.uuid4() for _ in range(chats)]
    for chat_id in ids:
        await log.extend(chat_id, 0, count)
    sender, recipient, now = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    drafts = [Message(new_id(), ids[i % chats], 0, sender, recipient, f"c{i}",
                      f"message {i}: a short line of chat, as most are", now) for i in range(count)]
    before = await cpu_seconds(redis)
    await in_flight([lambda d=d: log.append(d) for d in drafts])
    sent = await cpu_seconds(redis)
    async with make_broadcast(url) as broadcast:
        pusher = PartitionedConsumer(redis, spec, CHAT_PUSHER, "cost", decode_entry, ChatPusher(broadcast, PREFIX),
                                     NoFences(), batch_size=500)
        await pusher.run(until_idle=True)
    pushed = await cpu_seconds(redis)

    async def held(partition: int, fence: int, batch: list[tuple[str, Any]]) -> None:
        return None

    reader = PartitionedConsumer(redis, spec, CHAT_AGGREGATOR, "cost", decode_entry, held, NoFences(),
                                 batch_size=500)
    await reader.run(until_idle=True)
    read = await cpu_seconds(redis)
    recent = sum([int(await redis.memory_usage(log.recent_key(c)) or 0) for c in ids])
    streams = sum([int(await redis.memory_usage(spec.key(p)) or 0) for p in range(spec.partitions)])
    sample = len(encode_message(drafts[0]))
    return {"redis_cpu_us_per_message_sent": round((sent - before) / count * 1e6, 2),
            "redis_cpu_us_per_message_pushed": round((pushed - sent) / count * 1e6, 2),
            "redis_cpu_us_per_message_read": round((read - pushed) / count * 1e6, 2),
            "recent_bytes_per_message": round(recent / count, 1),
            "stream_bytes_per_message": round(streams / count, 1), "message_json_bytes": sample}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = PrivateRedis(Path(tmp))
        await server.start()
        redis = open_redis(server.url)
        try:
            started = time.perf_counter()
            figures: dict[str, Any] = {**await swipe_costs(redis, args.swipes),
                                       **await message_costs(redis, server.url, args.messages, args.chats)}
            figures["seconds"] = round(time.perf_counter() - started, 1)
            figures["redis_version"] = (await redis.info("server"))["redis_version"]
        finally:
            await redis.aclose()
            await server.kill()
    figures["settings"] = vars(args)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swipes", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--chats", type=int, default=2_000)
    figures = asyncio.run(measure(parser.parse_args()))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
