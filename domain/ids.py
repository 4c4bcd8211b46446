import os
import time
import uuid


def new_id(now_ms: int | None = None) -> uuid.UUID:
    # UUIDv7: 48-bit millisecond timestamp then randomness, so ids sort by creation time and any
    # process can mint them without a central counter (RFC 9562).
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 68) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw) if len(raw) == 36 else None
    except ValueError:
        return None
