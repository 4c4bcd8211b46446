import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from domain.swipes import Direction, Swipe
from infra.devstack import free_port
from infra.settings import Settings
from infra.swipe_queue import SWIPE_WRITER, encode, swipes_spec
from tests.conftest import settings_env


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("group") == SWIPE_WRITER:
                found[sample.name] = sample.value
    return found


def run_writer_until(env: dict[str, str], port: int) -> tuple[dict[str, float], bytes]:
    """Runs a swipe writer until it reports the two test entries; returns its last metrics and its log."""
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "worker", "swipe-writer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                seen = scrape(port)
            except httpx.HTTPError:
                seen = {}
            if seen.get("stream_dead_letters_total") == 1 and seen.get("stream_entries_handled_total") == 1:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()[-3000:]
    return seen, err


async def test_a_worker_reports_lag_pending_and_dead_letters(settings: Settings, migrated: None) -> None:
    prefix = f"{settings.redis_prefix}metrics-{secrets.token_hex(3)}:"  # a stream of this test's own
    spec = swipes_spec(prefix, 1)
    redis = aioredis.Redis.from_url(settings.redis_url)
    swipe = encode(Swipe(uuid.uuid4(), uuid.uuid4(), Direction.DISLIKE, False, datetime.now(UTC)))
    try:
        await redis.xadd(spec.key(0), {"e": swipe})
        await redis.xadd(spec.key(0), {"e": "not json at all"})
        port = free_port()
        env = {**os.environ, **settings_env(settings), "REDIS_PREFIX": prefix, "SWIPE_PARTITIONS": "1",
               "METRICS_PORT": str(port)}
        seen, log = await asyncio.to_thread(run_writer_until, env, port)
        assert seen.get("stream_dead_letters_total") == 1, seen
        assert seen.get("stream_entries_handled_total") == 1, seen
        assert {"stream_lag", "stream_pending", "stream_owned_partitions"} <= set(seen), seen
        assert b"cannot be decoded" in log  # the line an operator sees
        letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(spec.dead_key(0))  # type: ignore[assignment]
        assert [fields[b"e"] for _, fields in letters] == [b"not json at all"]
        assert letters[0][1][b"_group"] == SWIPE_WRITER.encode()
    finally:
        await redis.delete(spec.key(0), spec.dead_key(0))
        await redis.aclose()
