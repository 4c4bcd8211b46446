"""What the clients saw, and the checks of the server's promises made from it alone."""

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

Pair = tuple[str, str, str]  # a match, as (its id, one person, the other person)


@dataclass
class Sent:
    sender: str
    recipient: str
    started: float


@dataclass
class Ledger:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    places: Counter[tuple[str, str]] = field(default_factory=Counter)  # (code, operation)
    messages: dict[str, str] = field(default_factory=dict)  # the first one of each code, to tell what it was
    swipes: int = 0
    likes: int = 0
    reconnects: int = 0
    marks: int = 0
    resent: int = 0
    operations: int = 0  # HTTP requests answered
    acked: dict[tuple[str, int], Sent] = field(default_factory=dict)
    # (person, chat) -> (seq, when it arrived, since when that person's socket was open)
    received: dict[tuple[str, str], list[tuple[int, float, float]]] = field(default_factory=dict)
    notified: dict[str, set[str]] = field(default_factory=dict)  # match -> people who heard MatchCreated
    caught_up: dict[str, set[str]] = field(default_factory=dict)  # match -> found by `matches` after a drop

    def error(self, code: str, where: str, message: str = "") -> None:
        self.errors[code] += 1
        self.places[(code, where)] += 1
        self.messages.setdefault(code, f"{where}: {message}"[:200])

    def timed(self, name: str, seconds: float) -> None:
        self.latencies.setdefault(name, []).append(seconds)

    def undelivered(self) -> list[tuple[str, int]]:
        """Acknowledged messages (chat, seq) that never reached their recipient's subscription."""
        seen = {(person, chat, got[0]) for (person, chat), received in self.received.items() for got in received}
        return [key for key, sent in self.acked.items() if (sent.recipient, *key) not in seen]

    def unheard(self, pairs: Iterable[Pair], ours: set[str]) -> list[str]:
        """Matches that one of our people neither heard of on myEvents nor found after a reconnect."""
        return sorted({match for match, *people in pairs for who in people if who in ours
                       and who not in self.notified.get(match, set()) | self.caught_up.get(match, set())})

    def repeats(self) -> tuple[int, int]:
        """Messages each person's subscriptions brought twice, and those that came after a later seq."""
        duplicated = out_of_order = 0
        for got in self.received.values():
            seqs = [seq for seq, _, _ in got]
            duplicated += len(seqs) - len(set(seqs))
            out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
        return duplicated, out_of_order

    def deliveries(self) -> tuple[list[float], list[float]]:
        """Seconds from sending to the recipient's subscription: while they were online, and for
        messages sent while they were away (which waited for them, not for the server)."""
        online: list[float] = []
        away: list[float] = []
        for (person, chat), got in self.received.items():
            for seq, at, online_since in got:
                sent = self.acked.get((chat, seq))
                if sent is not None and sent.recipient == person:
                    (online if online_since <= sent.started else away).append(at - sent.started)
        return online, away
