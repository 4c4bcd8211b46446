import uuid
from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import Unauthenticated
from domain.ids import new_id, parse_id
from domain.model import Principal
from infra.security import JwtSigner


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
