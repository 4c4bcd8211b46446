"""Rate-limit counters against the real Redis: shared between limiters (API processes) once they
flush, sliding across windows, and kept when Redis is briefly away."""
import secrets

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from domain.ratelimits import Check
from infra.rate_limiter import RedisRateLimiter
from infra.redis_client import open_redis
from tests.services import TestServices


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # a window edge for 60 s windows

    def __call__(self) -> float:
        return self.now


def limiter(redis: aioredis.Redis, prefix: str, clock: Clock) -> RedisRateLimiter:
    return RedisRateLimiter(redis, prefix, clock=clock)


async def test_processes_share_their_counts(redis: aioredis.Redis, services: TestServices) -> None:
    prefix, clock = f"{services.redis_prefix}rl{secrets.token_hex(3)}:", Clock()
    first, second = limiter(redis, prefix, clock), limiter(redis, prefix, clock)
    check = [Check("swipe:u:ann", 10, 60)]
    assert [await first.take(check) for _ in range(6)] == [0] * 6
    await first.flush()
    assert [await second.take(check) for _ in range(4)] == [0] * 4
    await second.flush()
    # Ten in this window, fleet-wide: wait for the next one, and 6 s into it (ten weigh 9 by then).
    assert await second.take(check) == 66
    await first.flush()  # nothing pending, so it has not heard of the second's four yet
    # As far as it knows, these make ten: the overshoot that one flush interval allows.
    assert await first.take([Check("swipe:u:ann", 10, 60, 4)]) == 0
    assert await first.take(check) == 66
    await first.flush()
    assert first._counters[("swipe:u:ann", int(clock.now // 60))].known == 14  # the fleet's true count


async def test_the_window_slides(redis: aioredis.Redis, services: TestServices) -> None:
    prefix, clock = f"{services.redis_prefix}rl{secrets.token_hex(3)}:", Clock()
    one = limiter(redis, prefix, clock)
    check = [Check("nearby:u:bob", 10, 60)]
    assert [await one.take(check) for _ in range(10)] == [0] * 10
    clock.now += 60  # the next window: the ten still weigh fully at its start
    wait = await one.take(check)
    assert wait >= 1
    clock.now += 30  # half of the previous window still overlaps: five of the ten count
    assert [await one.take(check) for _ in range(5)] == [0] * 5 and await one.take(check) > 0
    clock.now += 200
    await one.flush()
    assert await one.take(check) == 0 and len(one._counters) == 1  # old windows are forgotten


async def test_a_refused_request_counts_nothing_and_a_lost_flush_is_sent_again(
        redis: aioredis.Redis, services: TestServices) -> None:
    prefix, clock = f"{services.redis_prefix}rl{secrets.token_hex(3)}:", Clock()
    one = limiter(redis, prefix, clock)
    both = [Check("swipe:u:cat", 100, 60), Check("swipe:ip:198.51.100.7", 2, 60)]
    assert await one.take(both) == 0 and await one.take(both) == 0 and await one.take(both) > 0
    assert await one.take([both[0]]) == 0  # the refused one did not count against the user
    broken = RedisRateLimiter(open_redis("redis://127.0.0.1:1"), prefix, clock=clock)
    assert await broken.take([both[0]]) == 0
    with pytest.raises((RedisError, OSError)):
        await broken.flush()
    assert broken._counters[("swipe:u:cat", int(clock.now // 60))].pending == 1  # kept for the next flush
    await one.flush()
    window = int(clock.now // 60)
    assert await redis.get(f"{prefix}rl:{{swipe:u:cat}}:{window}") in (b"3", "3")
    assert await redis.get(f"{prefix}rl:{{swipe:ip:198.51.100.7}}:{window}") in (b"2", "2")


async def test_exact_counters_are_shared_at_once(redis: aioredis.Redis, services: TestServices) -> None:
    prefix, clock = f"{services.redis_prefix}rl{secrets.token_hex(3)}:", Clock()
    first, second = limiter(redis, prefix, clock), limiter(redis, prefix, clock)
    guess = [Check("log_in:ip:192.0.2.1", 3, 300, 1, True)]
    assert [await first.take(guess), await second.take(guess), await first.take(guess)] == [0, 0, 0]
    assert await second.take(guess) == 400  # no flush needed; the next window, once these weigh less
    clock.now += 450  # the next window, halfway: 1.5 of the 3 guesses still weigh, so one more fits
    assert await second.take(guess) == 0 and await first.take(guess) > 0
