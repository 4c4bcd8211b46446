"""One simulated person: what they do next, and what they hear."""

import asyncio
import math
import random
import time
import uuid
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import websockets

from infra.simulator.client import ApiError, Live
from infra.simulator.ledger import Sent

if TYPE_CHECKING:
    from infra.simulator.run import Simulator

SIGN_UP = """mutation SimSignUp($input: SignUpInput!) { signUp(input: $input) { __typename
  ... on AuthPayload { accessToken refreshToken me { id } } ... on Error { code } } }"""
REFRESH = """mutation SimRefresh($token: String!) { refreshToken(refreshToken: $token) { __typename
  ... on AuthPayload { accessToken refreshToken } ... on Error { code } } }"""
TAGS = "query SimTags { interestTags { slug } }"
PROFILE = """mutation SimProfile($input: ProfileInput!) { updateProfile(input: $input) { __typename
  ... on Error { code } } }"""
LOCATE = """mutation SimLocate($lat: Float!, $lon: Float!) {
  updateLocation(latitude: $lat, longitude: $lon, accuracyMeters: 25) { __typename ... on Error { code } } }"""
NEARBY = """query SimNearby($after: String) { nearbyCandidates(first: 20, after: $after) {
  edges { node { person { id } whyShown { sharedTags { slug } } } } pageInfo { hasNextPage endCursor } } }"""
SWIPE = "mutation Sim{op}($id: ID!) {{ {field}(userId: $id) {{ __typename ... on Error {{ code }} }} }}"
LIKE, DISLIKE = SWIPE.format(op="Like", field="like"), SWIPE.format(op="Dislike", field="dislike")
MATCHES = """query SimMatches($after: String) { matches(first: 100, after: $after) {
  edges { node { id person { id } } } pageInfo { hasNextPage endCursor } } }"""
SEND = """mutation SimSend($chat: ID!, $cmid: String!, $text: String!) {
  sendMessage(chatId: $chat, clientMessageId: $cmid, text: $text) { __typename
  ... on Message { seq } ... on Error { code } } }"""
MARK_READ = """mutation SimMarkRead($chat: ID!, $seq: Int!) { markRead(chatId: $chat, upToSeq: $seq) {
  __typename ... on Error { code } } }"""
MY_EVENTS = "subscription SimMyEvents { myEvents { __typename ... on MatchCreated { match { id person { id } } } } }"
CHAT_EVENTS = """subscription SimChat($chat: ID!, $after: Int) { chatEvents(chatId: $chat, afterSeq: $after) {
  __typename ... on MessageSent { message { seq senderId } } } }"""

GENDERS = ("WOMAN", "MAN", "NONBINARY")
LIKES_PER_DAY = 100  # the server's default quota: past it a person only dislikes
LOCATION_EVERY_S = 150.0  # within 30 updates an hour
TOKEN_REFRESH_S = 600.0
REPAGE_S = 20.0  # after the last page, before asking for a fresh list (newcomers, swipes undone)
REPAGE_EMPTY_S = 4.0
SEND_ATTEMPTS = 4
RECONNECT_BACKOFF_STEPS = 4  # waits double up to 16 times the first, then stay there
RETRIED = frozenset({"UNAVAILABLE", "TRANSPORT"})  # "retry freely" (docs/api-conventions.md)
RESEND_CHANCE = 0.05  # a message sent again with its clientMessageId, as after a lost answer
FAILURES = (ApiError, websockets.WebSocketException, OSError, TimeoutError)


@dataclass
class Chat:
    id: str
    peer: str
    last_seq: int = 0
    read_seq: int = 0
    closed: bool = False


class Person:
    def __init__(self, sim: "Simulator", index: int) -> None:
        self.sim, self.api, self.ledger = sim, sim.api, sim.ledger
        self.rng = random.Random(sim.rng.random())
        self.index = index
        self.id = self.token = self.refresh = ""
        self.token_at = 0.0
        self.refreshing = asyncio.Lock()
        self.linking = asyncio.Lock()  # one socket at a time, however a reconnect was started
        self.chats: dict[str, Chat] = {}
        self.live: Live | None = None
        self.online_since = 0.0
        self.queue: list[tuple[str, int]] = []  # candidates of the current page, with shared tags
        self.cursor: str | None = None
        self.exhausted_at: float | None = None
        self.repage_after = REPAGE_S
        self.liked = 0
        self.locate_at = 0.0
        self.position = self._near(sim.centre, 1.5)
        # A phone of its own: counted apart by the per-address limits when the server trusts the
        # forwarding header (private, so sign-in places nobody by it).
        self.address = f"10.{sim.octet}.{index // 256 % 256}.{index % 256}"

    def _near(self, point: tuple[float, float], km: float) -> tuple[float, float]:
        distance, bearing = km * math.sqrt(self.rng.random()), self.rng.uniform(0, 2 * math.pi)
        lat = point[0] + distance / 111.0 * math.cos(bearing)
        lon = point[1] + distance / (111.0 * math.cos(math.radians(point[0]))) * math.sin(bearing)
        return lat, lon

    async def call(self, name: str, query: str, variables: dict[str, Any] | None = None) -> Any:
        # Access tokens live 15 minutes; refresh well before, as an app would. One refresh at a time:
        # a refresh token used twice ends the whole session.
        async with self.refreshing:
            if time.monotonic() - self.token_at > TOKEN_REFRESH_S:
                pair = await self.api.call("refreshToken", REFRESH, {"token": self.refresh}, address=self.address)
                if pair["__typename"] != "AuthPayload":
                    raise ApiError(pair.get("code", pair["__typename"]))
                self.token, self.refresh, self.token_at = pair["accessToken"], pair["refreshToken"], time.monotonic()
        return await self.api.call(name, query, variables or {}, self.token, self.address)

    async def sign_up(self, tags: list[str], gate: asyncio.Semaphore) -> None:
        rng = self.rng
        gender = rng.choices(GENDERS, weights=(45, 45, 10))[0]
        born = date.today() - timedelta(days=rng.randint(20 * 365, 40 * 365))
        async with gate:  # only the password hash is costly: the rest of setting up goes on unqueued
            result = await self.api.call("signUp", SIGN_UP, {"input": {
                "email": f"{self.sim.run_id}-{self.index}@simulated.newfriends.test", "password": "a simulated person",
                "displayName": f"Sim {self.index}", "birthDate": born.isoformat(), "gender": gender}},
                address=self.address)
        if result["__typename"] != "AuthPayload":
            raise ApiError(result.get("code", result["__typename"]))
        self.id, self.token, self.refresh = result["me"]["id"], result["accessToken"], result["refreshToken"]
        self.token_at = time.monotonic()
        show_me = list(GENDERS) if rng.random() < 0.7 else [g for g in GENDERS if g != gender]
        # Popular tags first: a few are shared by many, most by few, as in real profiles.
        picked = sorted({tags[min(int(rng.expovariate(0.15)), len(tags) - 1)] for _ in range(6)}) if tags else []
        await self.call("updateProfile", PROFILE, {"input": {
            "showMe": show_me, "interestTags": picked, "ageMin": 18, "ageMax": 60, "maxDistanceKm": 5}})
        await self.locate()

    async def locate(self) -> None:
        self.position = self._near(self.position, 0.3)  # a short walk: never an impossible jump
        await self.call("updateLocation", LOCATE, {"lat": self.position[0], "lon": self.position[1]})
        self.locate_at = time.monotonic() + LOCATION_EVERY_S

    async def connect(self, catch_up: bool) -> None:
        self.live = live = await Live.open(self.sim.ws_url, self.token, self.ledger, self.sim.connecting,
                                           self.address)
        live.lost = lambda: self._background(self._resume(live))
        self.online_since = time.perf_counter()
        for chat in list(self.chats.values()):
            await self._follow(chat)
        await self._listen(catch_up)

    async def _listen(self, catch_up: bool) -> None:
        live = self.live
        if live is None:
            return
        await live.subscribe("myEvents", MY_EVENTS, {}, self._on_event, lambda: self._again(live, self._listen(True)))
        if catch_up:
            # Matches made while nobody listened were told to nobody here: `matches` has them.
            await asyncio.sleep(0.3)
            for match_id, peer in await self.matches():
                if match_id not in self.chats:
                    self.ledger.caught_up.setdefault(match_id, set()).add(self.id)
                    await self._joined(match_id, peer)

    def _again(self, live: Live, resubscribe: Coroutine[Any, Any, None]) -> None:
        """A subscription the server ended (UNAVAILABLE asks to subscribe again) comes back on the same
        socket with its cursor; one that a drop ended comes back with the new socket."""

        async def later() -> None:
            await asyncio.sleep(0.5)
            if self.live is live and not live.reader.done():
                await resubscribe
            else:
                resubscribe.close()

        self._background(later())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            with suppress(*FAILURES):  # counted where it happened; the next drop or step tries again
                await work

        task = asyncio.get_running_loop().create_task(guarded())
        self.sim.tasks.add(task)
        task.add_done_callback(self.sim.tasks.discard)

    async def matches(self) -> list[tuple[str, str]]:
        found, after = [], None
        while True:
            page = await self.call("matches", MATCHES, {"after": after})
            found += [(e["node"]["id"], e["node"]["person"]["id"]) for e in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                return found
            after = page["pageInfo"]["endCursor"]

    def _on_event(self, data: dict[str, Any]) -> None:
        event = data["myEvents"]
        if event["__typename"] == "MatchCreated":
            match = event["match"]
            self.ledger.notified.setdefault(match["id"], set()).add(self.id)
            if match["id"] not in self.chats:
                self._background(self._joined(match["id"], match["person"]["id"]))

    async def _joined(self, chat_id: str, peer: str) -> None:
        if chat_id in self.chats:
            return
        self.chats[chat_id] = chat = Chat(chat_id, peer)
        await self._follow(chat)

    async def _follow(self, chat: Chat) -> None:
        if self.live is None:
            return  # subscribed with its cursor when the socket is back
        received = self.ledger.received.setdefault((self.id, chat.id), [])

        live = self.live

        def on_chat(data: dict[str, Any]) -> None:
            event = data["chatEvents"]
            if event["__typename"] == "MessageSent":
                seq = event["message"]["seq"]
                received.append((seq, time.perf_counter(), self.online_since))
                chat.last_seq = max(chat.last_seq, seq)
            elif event["__typename"] == "ChatClosed":
                chat.closed = True

        def ended() -> None:
            if not chat.closed:
                self._again(live, self._follow(chat))

        try:
            await live.subscribe("chatEvents", CHAT_EVENTS, {"chat": chat.id, "after": chat.last_seq}, on_chat, ended)
        except websockets.ConnectionClosed:
            pass  # the drop that closed it resubscribes every chat

    async def drop(self) -> None:
        async with self.linking:
            if self.live is not None:
                live, self.live = self.live, None
                await live.close()
            await asyncio.sleep(self.rng.uniform(0.5, 3))
            self.ledger.reconnects += 1
            try:
                await self.connect(catch_up=True)
            except FAILURES:
                if self.live is None:  # an app keeps trying, also once this person stops acting
                    self._background(self._resume(None))
                raise

    async def _resume(self, live: Live | None) -> None:
        # The server ended the socket (1012 asks for an immediate reconnect): an app comes back at
        # once, from its cursors, also after the last operation, while messages may still arrive,
        # and keeps trying until it is back: giving up would count a busy server's delay as loss.
        async with self.linking:
            if self.live is not live or self.sim.finished:
                return  # replaced meanwhile, or the run is over
            self.live = None
            attempt = 0
            while not self.sim.finished:
                await asyncio.sleep(self.rng.uniform(0.2, 1.0) * 2 ** min(attempt, RECONNECT_BACKOFF_STEPS))
                attempt += 1
                try:
                    self.ledger.reconnects += 1
                    await self.connect(catch_up=True)
                    return
                except FAILURES:
                    if self.live is not None:
                        return  # connected; only a catch-up read failed, and the next drop retries it

    async def step(self) -> None:
        rng, now = self.rng, time.monotonic()
        unread = [c for c in self.chats.values() if c.last_seq > c.read_seq]
        if not self.linking.locked() and (self.live is None or self.live.reader.done()):
            # A reconnect that failed, or a socket that ended before anyone listened for its end.
            await self.drop()
        elif now >= self.locate_at:
            await self.locate()
        elif rng.random() < self.sim.options.drop_chance:
            await self.drop()
        elif unread and rng.random() < 0.3:
            chat = rng.choice(unread)
            upto = chat.last_seq
            await self.call("markRead", MARK_READ, {"chat": chat.id, "seq": upto})
            chat.read_seq, self.ledger.marks = upto, self.ledger.marks + 1
        elif self.chats and (rng.random() < 0.4 or (not self.queue and self.exhausted_at is not None)):
            await self.send(rng.choice(list(self.chats.values())))
        elif self.queue:
            await self.swipe(*self.queue.pop(0))
        elif self.exhausted_at is None or now - self.exhausted_at > self.repage_after:
            await self.page()

    async def send(self, chat: Chat) -> None:
        started = time.perf_counter()
        variables = {"chat": chat.id, "cmid": uuid.uuid4().hex, "text": f"hello from {self.index}"}
        for attempt in range(SEND_ATTEMPTS):
            try:
                result = await self.call("sendMessage", SEND, variables)
                break
            except ApiError as exc:
                # The same clientMessageId again is safe: the server answers the first Message, if any.
                if exc.code not in RETRIED or attempt == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        if result["__typename"] != "Message":
            return
        self.ledger.acked[(chat.id, result["seq"])] = Sent(self.id, chat.peer, started)
        if self.rng.random() < RESEND_CHANCE:
            # As an app retrying after a lost answer would: nothing new may be sent.
            again = await self.call("sendMessage", SEND, variables)
            self.ledger.resent += 1
            if again.get("seq") != result["seq"]:
                self.ledger.error("RESENT_AS_NEW", "sendMessage")

    async def swipe(self, person: str, shared: int) -> None:
        like = self.liked < LIKES_PER_DAY and self.rng.random() < min(0.9, 0.5 + 0.15 * shared)
        result = await self.call("like" if like else "dislike", LIKE if like else DISLIKE, {"id": person})
        if result["__typename"] == "Swipe":
            self.ledger.swipes += 1
            self.liked += like
            self.ledger.likes += like
        elif result.get("code") == "QUOTA_EXCEEDED":
            self.liked = LIKES_PER_DAY

    async def page(self) -> None:
        result = await self.call("nearbyCandidates", NEARBY, {"after": self.cursor})
        self.queue = [(e["node"]["person"]["id"], len(e["node"]["whyShown"]["sharedTags"])) for e in result["edges"]]
        more = result["pageInfo"]["hasNextPage"]
        self.cursor = result["pageInfo"]["endCursor"] if more else None
        self.exhausted_at = None if more else time.monotonic()
        # Nobody at all yet: others' positions may still be on their way to discovery.
        self.repage_after = REPAGE_S if self.queue else REPAGE_EMPTY_S

    async def run(self, until: float, interval: float) -> None:
        # Spread over the first interval, then jittered around it: people do not act in lockstep.
        # Those whose position is due already (setting up took a while) move within one period,
        # not all in the first second.
        self.locate_at = max(self.locate_at, time.monotonic() + self.rng.uniform(0, LOCATION_EVERY_S))
        await asyncio.sleep(self.rng.uniform(0, interval))
        while time.monotonic() < until:
            try:
                await self.step()
            except FAILURES:
                pass  # counted where it happened; the person carries on
            await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))
