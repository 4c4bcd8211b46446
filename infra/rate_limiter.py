"""Rate limit counters shared by every API process through Redis.

Exact checks (the rare operations that guard accounts) are one script call each. For the others,
each process counts locally and adds its counts to Redis every few tens of milliseconds, learning
the fleet's totals in the same reply; a request is judged on the last totals seen plus what this
process has not sent yet. Across N processes a burst can overshoot a limit by what N processes
accept within one flush interval (and a process judges its first request for someone before it has
heard of the others' counts), which is nothing next to the limits themselves (abuse ceilings);
in return the hottest paths (swipes, nearby pages) pay a dictionary lookup, not a Redis call.
Redis being away fails open: limits guard the service, they hold nothing anyone was promised.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from domain.ratelimits import Check, estimate, retry_after
from infra.tasks import stop_task

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0  # how often windows too old to matter are forgotten

# Both windows share the counter's hash tag: one slot. Same estimate as domain.ratelimits.estimate.
_EXACT = """
local cost, limit, elapsed, seconds = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if previous * math.max(0, 1 - elapsed / seconds) + current + cost > limit then return {0, current, previous} end
redis.call('INCRBY', KEYS[1], cost)
redis.call('EXPIRE', KEYS[1], 2 * seconds + 5)
return {1, current + cost, previous}
"""


@dataclass
class _Counter:
    seconds: int
    known: int = 0  # the fleet's total, as of the last reply
    pending: int = 0  # taken here, not sent yet
    sending: int = 0  # sent, reply not back yet

    @property
    def total(self) -> int:
        return self.known + self.pending + self.sending


class RedisRateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, scale: float = 1.0, flush_seconds: float = 0.05,
                 clock: Callable[[], float] = time.time) -> None:
        self.scale = scale
        self._redis = redis
        self._prefix = prefix
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._counters: dict[tuple[str, int], _Counter] = {}
        # Looked at since the last flush, so worth sending and learning the fleet's total: a flush
        # then costs what was used, not a walk over every person's counters twenty times a second.
        self._due: dict[tuple[str, int], _Counter] = {}
        self._swept = 0.0
        self._task: asyncio.Task[None] | None = None
        self._exact = redis.register_script(_EXACT)

    def _name(self, key: str, window: int) -> str:
        return f"{self._prefix}rl:{{{key}}}:{window}"

    async def take(self, checks: list[Check]) -> int:
        """0 when every counter has room (and then each counts the request); otherwise the seconds to
        wait. A refusal by a local counter counts nothing; one by an exact counter may leave another
        exact counter of the same request counted (they are rare, and this errs towards refusing)."""
        now = self._clock()
        local = [c for c in checks if not c.exact]
        wait = self._take_local(local, now, count=False)
        if wait:
            return wait
        for check in checks:
            if check.exact:
                wait = await self._take_exact(check, now)
                if wait:
                    return wait
        return self._take_local(local, now, count=True)

    async def _take_exact(self, check: Check, now: float) -> int:
        window = int(now // check.seconds)
        elapsed = now - window * check.seconds
        try:
            taken, current, previous = await self._exact(
                [self._name(check.key, window), self._name(check.key, window - 1)],
                [check.cost, check.limit, elapsed, check.seconds])
        except (RedisError, OSError) as error:
            log.warning("rate limits: could not reach Redis (%r); letting %s through", error, check.key)
            return 0
        return 0 if taken else retry_after(int(previous), int(current), elapsed, check.seconds, check.limit,
                                           check.cost)

    def _take_local(self, checks: list[Check], now: float, *, count: bool) -> int:
        found = []
        for check in checks:
            window = int(now // check.seconds)
            elapsed = now - window * check.seconds
            current = self._counter(check.key, window, check.seconds)
            self._due[(check.key, window)] = current
            previous = self._counters.get((check.key, window - 1))
            before = previous.total if previous else 0
            if estimate(before, current.total + check.cost, elapsed, check.seconds) > check.limit:
                return retry_after(before, current.total, elapsed, check.seconds, check.limit, check.cost)
            found.append((current, check.cost))
        if count:
            for counter, cost in found:
                counter.pending += cost
        return 0

    def _counter(self, key: str, window: int, seconds: int) -> _Counter:
        counter = self._counters.get((key, window))
        if counter is None:
            counter = self._counters[(key, window)] = _Counter(seconds)
        return counter

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rate-limit-flusher")

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        with contextlib.suppress(RedisError, OSError):
            await self.flush()  # what was counted here still counts for the others

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except (RedisError, OSError) as error:
                log.warning("rate limits: could not reach Redis (%r); counting locally meanwhile", error)

    async def flush(self) -> None:
        now = self._clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            # Windows that can no longer weigh on a request go: the previous one still counts.
            for gone in [k for k, c in self._counters.items() if k[1] < int(now // c.seconds) - 1]:
                del self._counters[gone]
                self._due.pop(gone, None)
        # Counters only looked at are refreshed too (adding nothing): a process that has counted
        # nothing itself learns what the others counted.
        due, self._due = list(self._due.items()), {}
        if not due:
            return
        for _, counter in due:
            counter.sending, counter.pending = counter.pending, 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (key, window), counter in due:
                    name = self._name(key, window)
                    pipe.incrby(name, counter.sending)
                    pipe.expire(name, 2 * counter.seconds + 5)
                replies = await pipe.execute()
        except BaseException:
            for place, counter in due:  # sent again next time: a count is never dropped
                counter.pending, counter.sending = counter.pending + counter.sending, 0
                self._due[place] = counter
            raise
        for (_, counter), total in zip(due, replies[::2], strict=True):
            counter.known, counter.sending = int(total), 0
