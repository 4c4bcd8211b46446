import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from domain.errors import Code, InputError

_MAC_BYTES = 12
# A page signs a cursor per edge: one encoder, and the key's HMAC state worked out once and copied.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> "hmac.HMAC":
    return hmac.new(key, digestmod=hashlib.sha256)


def encode_cursor(key: bytes, kind: str, payload: list[Any]) -> str:
    # Signed, so a client cannot forge positions; the kind keeps one list's cursor out of another.
    body = _COMPACT.encode([kind, *payload]).encode()
    mac = _keyed(key).copy()
    mac.update(body)
    return base64.urlsafe_b64encode(mac.digest()[:_MAC_BYTES] + body).decode().rstrip("=")


def cursors_along(key: bytes, kind: str, fixed: list[Any]) -> Callable[[Any], str]:
    """encode_cursor for payloads `fixed + [last]`, at half its cost: the shared start of the body
    is encoded and fed to the MAC once, for a page's worth of cursors into one list."""
    start = _COMPACT.encode([kind, *fixed, 0])[:-2].encode()  # up to and including the last comma
    prefix = _keyed(key).copy()
    prefix.update(start)

    def encode(last: Any) -> str:
        # A position is what it is asked for on every edge: a number needs no JSON encoder.
        tail = (str(last) if type(last) is int else _COMPACT.encode(last)).encode() + b"]"
        mac = prefix.copy()
        mac.update(tail)
        return base64.urlsafe_b64encode(mac.digest()[:_MAC_BYTES] + start + tail).decode().rstrip("=")

    return encode


def decode_cursor(key: bytes, kind: str, cursor: str, field: str = "after") -> list[Any]:
    invalid = InputError(Code.INVALID_CURSOR, "Not a cursor of this list", field)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise invalid from None
    mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if len(cursor) > 512 or not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]):
        raise invalid
    data = json.loads(body)
    if not isinstance(data, list) or not data or data[0] != kind:
        raise invalid
    return data[1:]


def page_size(first: int | None, default: int = 20, most: int = 100) -> int:
    size = default if first is None else first
    if not 1 <= size <= most:
        raise InputError(Code.INVALID_INPUT, f"first must be between 1 and {most}", "first")
    return size
