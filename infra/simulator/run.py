"""A crowd of people, run for a while, then drained and checked."""

import asyncio
import random
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.simulator.client import Api
from infra.simulator.ledger import Ledger, Pair
from infra.simulator.person import TAGS, Person
from infra.simulator.summary import Summary

SIGN_UPS_IN_FLIGHT = 8  # password hashing is the server's most expensive step
CONNECTS_IN_FLIGHT = 20  # each connection_init checks the session in Redis, as a burst of apps reopening would
RUN_PREFIX = "sim"
LAG_TICK_S = 0.1
PLACED_WITHIN_S = 60.0
DRAIN_MOST = 8  # times --drain-seconds: however slowly things still arrive, the run ends
ARCHIVE_METRIC = "archive_objects_written"  # the archive writer's counter (workers/archive_writer.py)
PLACED_PAGE = 100
PLACED = f"query SimPlaced {{ nearbyCandidates(first: {PLACED_PAGE}) {{ edges {{ cursor }} }} }}"


@dataclass
class Options:
    url: str
    users: int = 50
    seconds: float = 60.0
    rate: float | None = None  # operations a second, everyone together; default: half a one per person
    drain_seconds: float = 15.0
    drop_chance: float = 0.01  # per operation: the socket drops and comes back a moment later
    seed: int | None = None
    metrics_urls: tuple[str, ...] = ()


async def _settled(done: Callable[[], bool], progress: Callable[[], int], quiet: float, most: float) -> None:
    """Until done, or until nothing has arrived for `quiet` seconds: a busy server is late, not
    lossy, while it still delivers; only what never comes once it has gone quiet is lost."""
    # What is checked is the server's work seen from outside: nothing here could signal it.
    started = last_change = time.monotonic()
    last = progress()
    while not done():
        now, seen = time.monotonic(), progress()
        if seen != last:
            last, last_change = seen, now
        if now - last_change > quiet or now - started > most:
            return
        await asyncio.sleep(0.25)


class Simulator:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        base = options.url.rstrip("/").removesuffix("/graphql")
        self.base, self.ws_url = base, base.replace("http", "ws", 1) + "/graphql"
        self.ledger = Ledger()
        self.api = Api(base, self.ledger)
        self.tasks: set[asyncio.Task[None]] = set()
        self.finished = False
        self.connecting = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
        self.run_id = f"{RUN_PREFIX}-{uuid.uuid4().hex[:10]}"
        self.octet = self.rng.randrange(256)  # each run's people at other addresses than the last run's
        # Somewhere in the open ocean, different for every run: nobody but this run's people is near.
        self.centre = (self.rng.uniform(-45, -25), self.rng.uniform(-140, -100))
        self.people = [Person(self, i) for i in range(options.users)]

    async def setup(self) -> None:
        gate = asyncio.Semaphore(SIGN_UPS_IN_FLIGHT)
        tags = [t["slug"] for t in await self.api.call("interestTags", TAGS, {})]
        await asyncio.gather(*(p.sign_up(tags, gate) for p in self.people))
        await self.placed()
        await asyncio.gather(*(p.connect(catch_up=False) for p in self.people))

    async def placed(self) -> None:
        """Positions reach discovery through the location updater a moment after they are stored:
        begun before, everyone would find nobody. Waits until one person's view stops growing."""
        if len(self.people) < 2:
            return
        viewer, seen, steady = self.people[0], -1, 0
        deadline = time.monotonic() + PLACED_WITHIN_S
        while time.monotonic() < deadline and steady < 2:
            page = await viewer.call("nearbyCandidates (setup)", PLACED, {})
            count = len(page["edges"])
            if count >= PLACED_PAGE:
                return  # as many as a page holds: discovery is working
            steady, seen = (steady + 1 if count == seen and count > 0 else 0), count
            await asyncio.sleep(1)

    async def drain(self) -> list[Pair]:
        """Waits for what is still in flight; answers every match as (id, person, other person)."""
        quiet, most = self.options.drain_seconds, DRAIN_MOST * self.options.drain_seconds
        await _settled(lambda: not (self.ledger.undelivered() or self.unheard()), self._arrivals, quiet, most)
        found = []
        for person in self.people:
            found += [(m, person.id, peer) for m, peer in await person.matches()]
        await _settled(lambda: not self.unheard(found), self._arrivals, quiet, most)
        return found

    def _arrivals(self) -> int:
        ledger = self.ledger
        return (sum(map(len, ledger.received.values())) + sum(map(len, ledger.notified.values()))
                + sum(map(len, ledger.caught_up.values())))

    def unheard(self, matches: list[Pair] | None = None) -> list[str]:
        pairs = matches if matches is not None else [
            (m, p.id, c.peer) for p in self.people for m, c in p.chats.items()]
        return self.ledger.unheard(pairs, {p.id for p in self.people})

    async def archive_objects(self) -> float | None:
        total, found = 0.0, False
        for url in (f"{self.base}/metrics", *self.options.metrics_urls):
            try:
                families = list(text_string_to_metric_families((await self.api.http.get(url)).text))
            except (httpx.HTTPError, ValueError):
                continue  # a worker without an exporter, or not one that speaks Prometheus
            for family in families:
                if family.name == ARCHIVE_METRIC:
                    found = True
                    total += sum(s.value for s in family.samples if not s.name.endswith("_created"))
        return total if found else None

    async def _watch_lag(self) -> None:
        # Every latency here is seen from this process: if its own loop falls behind, they all grow.
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            self.ledger.timed("(this simulator's own event-loop delay)", time.perf_counter() - started - LAG_TICK_S)

    async def execute(self) -> Summary:
        options = self.options
        started = time.monotonic()
        archived_before = await self.archive_objects()
        await self.setup()
        setup_seconds = time.monotonic() - started
        rate = options.rate or options.users / 2
        interval = max(1.0, options.users / rate)  # nobody faster than one operation a second
        acting, operations = time.monotonic(), self.ledger.operations
        until = acting + options.seconds
        lag = asyncio.create_task(self._watch_lag())
        await asyncio.gather(*(p.run(until, interval) for p in self.people))
        achieved = (self.ledger.operations - operations) / max(1e-9, time.monotonic() - acting)
        matches = await self.drain()
        lag.cancel()
        archived_after = await self.archive_objects()
        self.finished = True
        for person in self.people:
            if person.live is not None:
                await person.live.close()
        await self.api.aclose()
        archived = None if archived_after is None else archived_after - (archived_before or 0.0)
        return Summary.of(self.ledger, {p.id for p in self.people}, matches, setup_seconds,
                          options.users / interval, archived, achieved)


def _enough_files(people: int) -> None:
    # A socket and an HTTP connection per person: more than the 1,024 files many systems allow by
    # default, but rarely more than the hard limit lets a process take.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * people + 100
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


async def simulate(options: Options) -> Summary:
    _enough_files(options.users)
    return await Simulator(options).execute()
