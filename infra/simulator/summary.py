from collections import Counter
from dataclasses import dataclass

from infra.simulator.ledger import Ledger, Pair

# The product's own answers to a person doing too much of something: part of the traffic, not faults.
EXPECTED_CODES = frozenset({"QUOTA_EXCEEDED"})


@dataclass
class Summary:
    people: int
    setup_seconds: float
    ops_per_second: float
    swipes: int
    likes: int
    matches: int
    unheard_matches: list[str]
    caught_up: int
    sent: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    reconnects: int
    marks: int
    resent: int
    latencies: dict[str, list[float]]
    errors: Counter[str]
    places: Counter[tuple[str, str]]
    messages: dict[str, str]
    archived: float | None
    achieved: float = 0.0  # operations a second actually answered while everyone was acting

    @classmethod
    def of(cls, ledger: Ledger, ours: set[str], matches: list[Pair], setup_seconds: float, ops: float,
           archived: float | None, achieved: float = 0.0) -> "Summary":
        online, away = ledger.deliveries()
        lost = len(ledger.undelivered())
        latencies = {**ledger.latencies, "message delivered, recipient online": online,
                     "message delivered, recipient resumed later": away}
        return cls(len(ours), setup_seconds, ops, ledger.swipes, ledger.likes, len({m for m, _, _ in matches}),
                   ledger.unheard(matches, ours), sum(len(v) for v in ledger.caught_up.values()), len(ledger.acked),
                   len(ledger.acked) - lost, lost, *ledger.repeats(), ledger.reconnects, ledger.marks,
                   ledger.resent, latencies, ledger.errors, ledger.places, ledger.messages, archived, achieved)

    @property
    def unexpected_errors(self) -> int:
        return sum(n for code, n in self.errors.items() if code not in EXPECTED_CODES)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.unheard_matches
                    or self.unexpected_errors)

    def _errors(self) -> list[str]:
        return [f"{code} {n} (" + ", ".join(f"{where} {k}" for (c, where), k in self.places.most_common() if c == code)
                + ")" for code, n in self.errors.most_common()]

    def render(self) -> str:
        lines = [
            f"people              {self.people} (signed up and connected in {self.setup_seconds:.1f} s)",
            f"pace                {self.ops_per_second:.1f} operations/s asked in all (at most 1/s per person),"
            f" {self.achieved:.1f}/s answered",
            f"swipes              {self.swipes} ({self.likes} likes)",
            f"matches             {self.matches}, notified on both sides: {self.matches - len(self.unheard_matches)}"
            f" ({self.caught_up} sides found in `matches` after a reconnect)",
            f"messages            sent {self.sent}, delivered {self.delivered}, lost {self.lost}, "
            f"duplicated {self.duplicated}, out of order {self.out_of_order}",
            f"                    ({self.resent} sent again with their clientMessageId, as after a lost answer)",
            f"read marks          {self.marks}",
            f"reconnects          {self.reconnects} (resumed with afterSeq)",
            "archive objects     " + ("n/a (no archive metric on /metrics)" if self.archived is None
                                      else f"{self.archived:.0f} written"),
            "errors by code      " + ("; ".join(self._errors()) or "none"),
            *(f"                    {code}, first at {self.messages[code]}" for code in self.errors
              if code not in EXPECTED_CODES),
            f"                    expected: {', '.join(sorted(EXPECTED_CODES))} (the daily like quota);"
            " every other code, RATE_LIMITED too, is unexpected",
            "",
            f"{'latency (ms)':<52}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
        ]
        for name, values in sorted(self.latencies.items()):
            if values:
                ordered = sorted(values)
                cells = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 for q in (0.5, 0.9, 0.99)]
                lines.append(f"{name:<52}{len(ordered):>7}" + "".join(f"{c:>9.1f}" for c in cells)
                             + f"{ordered[-1] * 1000:>9.1f}")
        lines.append("")
        lines.append("OK" if self.ok else "FAILED: " + ", ".join(
            what for what, bad in (("messages lost", self.lost), ("messages duplicated", self.duplicated),
                                   ("messages out of order", self.out_of_order),
                                   (f"matches not notified on both sides {self.unheard_matches[:5]}",
                                    self.unheard_matches),
                                   ("unexpected errors", self.unexpected_errors)) if bad))
        return "\n".join(lines)
