"""Rate limits per operation class, per signed-in user and per client address.

Every root field of the schema belongs to one class (a test fails on a field that has none), so a
new field is limited from its first day. The numbers are ceilings for abuse, far above what a person
using the app does; quotas that are product rules (likes per day, location updates per hour) live
with their features.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int


@dataclass(frozen=True)
class Rule:
    per_user: Rate | None
    per_ip: Rate | None  # many people can share an address (carrier NAT): generous
    # Counted in Redis before answering, exactly, for the rare operations that guard accounts
    # (password guesses, sign-up floods); the frequent ones are counted locally and shared a few
    # times a second, which costs them nothing on the request path.
    exact: bool = False


RULES: dict[str, Rule] = {
    # Anonymous: only the address can be counted here; log-in attempts per account are counted
    # too (ACCOUNT_LOG_IN), so guesses spread over many addresses still meet a limit.
    "sign_up": Rule(None, Rate(20, 3600), exact=True),
    "log_in": Rule(None, Rate(60, 300), exact=True),
    "refresh": Rule(Rate(30, 300), Rate(600, 300), exact=True),
    "location": Rule(Rate(20, 60), Rate(2000, 60)),
    "nearby": Rule(Rate(120, 60), Rate(6000, 60)),
    "swipe": Rule(Rate(300, 60), Rate(20000, 60)),
    "message": Rule(Rate(120, 60), Rate(10000, 60)),
    "typing": Rule(Rate(60, 60), Rate(10000, 60)),
    "upload": Rule(Rate(30, 3600), Rate(1000, 3600), exact=True),
    "read": Rule(Rate(1200, 60), Rate(30000, 60)),
    "write": Rule(Rate(120, 60), Rate(6000, 60)),
}

# Password attempts on one account, from anywhere: far above a person mistyping, far below guessing.
# Only password log-in stops at it; signed-in devices keep refreshing their sessions.
ACCOUNT_LOG_IN = Rate(20, 900)

FIELD_CLASSES: dict[str, str] = {
    "signUp": "sign_up", "logIn": "log_in", "refreshToken": "refresh",
    "updateLocation": "location", "nearbyCandidates": "nearby",
    "like": "swipe", "dislike": "swipe", "superLike": "swipe", "undoLastSwipe": "swipe",
    "sendMessage": "message", "setTyping": "typing",
    # Confirming only queues what a granted upload sent: counted as an upload too, it would halve
    # the uploads an hour.
    "requestPhotoUpload": "upload", "confirmPhotoUpload": "write",
    "me": "read", "person": "read", "interestTags": "read", "matches": "read", "myLocation": "read",
    "messages": "read", "chat": "read", "chats": "read", "photos": "read",
    "logOut": "write", "logOutEverywhere": "write", "deleteAccount": "write", "updateProfile": "write",
    "unmatch": "write", "block": "write", "report": "write", "markRead": "write",
    "reorderPhotos": "write", "deletePhoto": "write", "benchNoop": "write",
    "__typename": "read", "__schema": "read", "__type": "read",
}


@dataclass(frozen=True)
class Check:
    """One counter to take from: its key, its limit, its window, and how many this request counts
    (aliases make one document several operations: fifty aliased likes are fifty swipes)."""

    key: str
    limit: int
    seconds: int
    cost: int = 1
    exact: bool = False


def checks(fields: list[str], user_id: str | None, ip: str, scale: float) -> list[Check]:
    """The counters a request with these root fields takes one from; scale multiplies every limit
    (0: no limits at all)."""
    if scale <= 0:
        return []
    costs: dict[str, int] = {}
    for name in fields:
        kind = FIELD_CLASSES.get(name, "write")
        costs[kind] = costs.get(kind, 0) + 1
    out = []
    for kind, cost in costs.items():
        rule = RULES[kind]
        if rule.per_user is not None and user_id is not None:
            out.append(Check(f"{kind}:u:{user_id}", _scaled(rule.per_user, scale), rule.per_user.seconds, cost,
                             rule.exact))
        if rule.per_ip is not None:
            out.append(Check(f"{kind}:ip:{ip}", _scaled(rule.per_ip, scale), rule.per_ip.seconds, cost, rule.exact))
    return out


def account_log_in_check(email_key: str, scale: float) -> list[Check]:
    """The counter of log-in attempts on one account (its normalised email, hashed so the limiter's
    keys hold no addresses)."""
    if scale <= 0:
        return []
    digest = hashlib.sha256(email_key.encode()).hexdigest()[:32]
    rate = ACCOUNT_LOG_IN
    return [Check(f"log_in:acct:{digest}", _scaled(rate, scale), rate.seconds, exact=True)]


def _scaled(rate: Rate, scale: float) -> int:
    return max(1, math.floor(rate.count * scale))


def estimate(previous: int, current: int, elapsed: float, seconds: int) -> float:
    """A sliding window from two fixed ones: the previous window counts for the share of it that
    still overlaps the last `seconds`. Fixed windows alone would let twice the limit through
    around a window's edge."""
    return previous * max(0.0, 1.0 - elapsed / seconds) + current


def retry_after(previous: int, current: int, elapsed: float, seconds: int, limit: int, cost: int = 1) -> int:
    """Whole seconds until a request of this cost fits (at least 1)."""
    if current + cost > limit:
        # Only the next window frees enough, and there this one's count still weighs at first:
        # current * (1 - t/s) + cost <= limit from t on.
        later = seconds * (1 - (limit - cost) / current) if cost <= limit else seconds
        return max(1, math.ceil(seconds - elapsed + max(0.0, later)))
    # The previous window's weight falls linearly; find when previous * (1 - t/s) + current + cost <= limit.
    free_at = seconds * (1 - (limit - current - cost) / previous) if previous else elapsed
    return max(1, math.ceil(free_at - elapsed))


class RateLimiter(Protocol):
    scale: float  # multiplies every limit; 0 turns them off

    async def take(self, checks: list[Check]) -> int: ...  # 0, or the seconds to wait
