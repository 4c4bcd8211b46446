"""Rate-limit rules: which counters a request takes from, the sliding estimate, retry-after, and
that every root field of the schema belongs to a class."""
from graphql import parse

from domain.ratelimits import FIELD_CLASSES, RULES, Check, checks, estimate, retry_after
from schema import build_schema
from schema.ratelimit import root_fields


def test_every_root_field_has_a_class() -> None:
    schema = build_schema(bench_noop=True)._schema
    names = {name for root in (schema.query_type, schema.mutation_type) if root for name in root.fields}
    assert names - FIELD_CLASSES.keys() == set(), "new fields must join domain/ratelimits.FIELD_CLASSES"
    assert set(FIELD_CLASSES.values()) <= RULES.keys()


def test_counters_per_class_user_and_address() -> None:
    taken = checks(["like", "dislike", "me"], "u1", "203.0.113.9", 1.0)
    assert taken == [Check("swipe:u:u1", 300, 60, 2), Check("swipe:ip:203.0.113.9", 20000, 60, 2),
                     Check("read:u:u1", 1200, 60), Check("read:ip:203.0.113.9", 30000, 60)]
    # Anonymous: the address only; sign-up has no per-user counter at all.
    assert checks(["signUp"], None, "203.0.113.9", 1.0) == [Check("sign_up:ip:203.0.113.9", 20, 3600, exact=True)]
    assert checks(["signUp"], None, "::1", 0.5)[0].limit == 10
    assert checks(["signUp"], None, "::1", 0.0001)[0].limit == 1  # never zero: scale 0 is "off"
    assert checks(["like"], "u1", "::1", 0) == []


def test_the_sliding_estimate_and_when_to_retry() -> None:
    assert estimate(100, 10, 0, 60) == 110
    assert estimate(100, 10, 30, 60) == 60
    assert estimate(100, 10, 60, 60) == 10
    # Full in this window alone: wait for the next one, and there until this one's five weigh 4 or less.
    wait = retry_after(0, 5, 20, 60, 5)
    assert wait == 40 + 12
    assert estimate(5, 1, 20 + wait - 60, 60) <= 5 < estimate(5, 1, 20 + wait - 61, 60)
    # The previous window's weight must fall from 10 * (1 - 15/60) = 7.5 to 4 (limit 5, one now, one more).
    wait = retry_after(10, 0, 15, 60, 5)
    assert estimate(10, 1, 15 + wait, 60) <= 5 < estimate(10, 1, 15 + wait - 1, 60)


def test_root_fields_through_fragments_and_not_for_subscriptions() -> None:
    doc = parse("""query Q { me { id } ...F ... on Query { person(id: "x") { id } } }
                   fragment F on Query { interestTags { slug } ...G }
                   fragment G on Query { matches { edges { cursor } } }
                   mutation M { a: like(userId: "1") { __typename } b: like(userId: "2") { __typename } }
                   subscription S { myEvents { __typename } }""")
    assert root_fields(doc, "Q") == ["me", "interestTags", "matches", "person"]
    assert root_fields(doc, "M") == ["like", "like"]
    assert root_fields(doc, "S") is None
