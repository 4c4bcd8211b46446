"""Traffic through the public API only, as many people at once would make it: sign up, profile,
position, pages of people nearby, likes and dislikes, matches heard on myEvents, chats over
subscriptions, read marks, dropped sockets resumed from their cursor. The ledger it keeps proves
that every acknowledged message reached the other person exactly once and in order, and that both
sides heard of every match.

Every person forwards an address of its own, as a load balancer would say whom it speaks for: a
server that trusts this machine as a proxy (TRUSTED_PROXIES) then counts each against the
per-address limits apart. Each keeps well within the per-person limits, so any RATE_LIMITED answer
counts as an unexpected error.
"""

from infra.simulator.client import ApiError
from infra.simulator.run import Options, simulate
from infra.simulator.summary import Summary

__all__ = ["ApiError", "Options", "Summary", "simulate"]
