"""The simulator's verdicts come from its ledger alone: what was acknowledged, what each person's
subscriptions brought, and who heard of which match."""
from infra.simulator.ledger import Ledger, Sent
from infra.simulator.summary import Summary

ANN, BOB = "ann", "bob"


def ledger_with(received: dict[tuple[str, str], list[int]], acked: dict[tuple[str, int], str]) -> Ledger:
    ledger = Ledger()
    for (chat, seq), recipient in acked.items():
        ledger.acked[(chat, seq)] = Sent(BOB if recipient == ANN else ANN, recipient, started=10.0)
    for key, seqs in received.items():
        ledger.received[key] = [(seq, 10.5, 0.0) for seq in seqs]
    return ledger


def test_a_message_acknowledged_but_never_brought_to_its_recipient_is_lost() -> None:
    ledger = ledger_with({(BOB, "c"): [1, 3], (ANN, "c"): [1, 2, 3]}, {("c", 1): BOB, ("c", 2): BOB, ("c", 3): BOB})
    assert ledger.undelivered() == [("c", 2)]  # the sender's own copy does not count


def test_the_same_seq_twice_is_a_duplicate_and_a_lower_one_after_a_higher_is_out_of_order() -> None:
    ledger = ledger_with({(BOB, "c"): [1, 2, 2, 3], (ANN, "c"): [2, 1]}, {})
    assert ledger.repeats() == (1, 1)


def test_a_match_must_be_heard_by_both_of_our_people_on_my_events_or_after_a_reconnect() -> None:
    ledger = Ledger(notified={"m1": {ANN, BOB}, "m2": {ANN}, "m3": {ANN}}, caught_up={"m3": {BOB}})
    pairs = [("m1", ANN, BOB), ("m2", ANN, BOB), ("m3", BOB, ANN), ("m4", ANN, "someone else")]
    assert ledger.unheard(pairs, {ANN, BOB}) == ["m2", "m4"]


def test_deliveries_to_someone_away_are_counted_apart_from_live_ones() -> None:
    ledger = ledger_with({}, {("c", 1): BOB, ("c", 2): BOB})
    ledger.received[(BOB, "c")] = [(1, 10.2, 5.0), (2, 14.0, 12.0)]  # back online at 12.0, after the send at 10.0
    online, away = ledger.deliveries()
    assert [round(x, 3) for x in online] == [0.2] and [round(x, 3) for x in away] == [4.0]


def test_only_the_daily_like_quota_is_an_expected_error() -> None:
    ledger = ledger_with({(BOB, "c"): [1]}, {("c", 1): BOB})
    ledger.error("QUOTA_EXCEEDED", "like")
    clean = Summary.of(ledger, {ANN, BOB}, [], 1.0, 2.0, None)
    assert clean.ok and clean.delivered == 1 and "OK" in clean.render()
    ledger.error("RATE_LIMITED", "sendMessage", "Too many requests")
    limited = Summary.of(ledger, {ANN, BOB}, [], 1.0, 2.0, None)
    assert not limited.ok and limited.unexpected_errors == 1
    assert "RATE_LIMITED, first at sendMessage: Too many requests" in limited.render()
