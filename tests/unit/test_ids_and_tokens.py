import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from domain.errors import Unauthenticated
from domain.ids import new_id, parse_id
from domain.model import Principal
from infra.security import JwtSigner
from resolvers.claims import claimed_user


def test_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [new_id(now_ms=1_700_000_000_000 + i) for i in range(1000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len({new_id(now_ms=5) for _ in range(10_000)}) == 10_000


def test_parse_id() -> None:
    value = new_id()
    assert parse_id(str(value)) == value
    assert parse_id("nope") is None and parse_id(value.hex) is None and parse_id("") is None


def test_tokens_expire_and_reject_tampering() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    signer = JwtSigner("s" * 48, ttl_seconds=900)
    principal = Principal(new_id(), new_id(), now + timedelta(days=30))
    token, expires = signer.issue(principal, now)
    assert expires == now + timedelta(seconds=900)
    assert signer.verify(token, now + timedelta(seconds=899)) == principal
    with pytest.raises(Unauthenticated) as expired:
        signer.verify(token, now + timedelta(seconds=900))
    assert expired.value.reason == "TOKEN_EXPIRED"
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), JwtSigner("t" * 48, 900).issue(principal, now)[0],
                "", "a.b.c"):
        with pytest.raises(Unauthenticated) as invalid:
            signer.verify(bad, now)
        assert invalid.value.reason == "TOKEN_INVALID"


def test_access_token_never_outlives_its_session() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    principal = Principal(new_id(), new_id(), now + timedelta(seconds=60))
    _, expires = JwtSigner("s" * 48, ttl_seconds=900).issue(principal, now)
    assert expires == principal.session_expires_at


def test_a_token_verified_once_still_expires_and_the_kept_ones_are_bounded() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    signer = JwtSigner("s" * 48, ttl_seconds=900, kept_tokens=2)
    principals = [Principal(new_id(), new_id(), now + timedelta(days=1)) for _ in range(3)]
    tokens = [signer.issue(p, now)[0] for p in principals]
    for _ in range(2):  # the second time round from what was kept, while anything is
        assert [signer.verify(t, now) for t in tokens] == principals
    with pytest.raises(Unauthenticated) as expired:
        signer.verify(tokens[2], now + timedelta(seconds=900))
    assert expired.value.reason == "TOKEN_EXPIRED"
    assert len(signer._verified) == 2
    for _ in range(2):  # a refused token is refused every time, never kept
        with pytest.raises(Unauthenticated):
            signer.verify(tokens[0][:-2], now)


def test_the_claimed_user_is_the_one_the_token_or_the_settled_check_names() -> None:
    now = datetime.now(UTC)
    signer = JwtSigner("s" * 48, ttl_seconds=900)
    principal = Principal(new_id(), new_id(), now + timedelta(days=1))
    token, _ = signer.issue(principal, now)
    ports = SimpleNamespace(tokens=signer, clock=lambda: now)
    assert claimed_user(SimpleNamespace(principal=None, bearer=token, ports=ports)) == principal.user_id
    assert claimed_user(SimpleNamespace(principal=principal, bearer=None, ports=ports)) == principal.user_id
    for bearer in (None, token[:-2], "nonsense"):
        assert claimed_user(SimpleNamespace(principal=None, bearer=bearer, ports=ports)) is None
    assert claimed_user(object()) is None
