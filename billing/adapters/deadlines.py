"""The deadline of the request being served, so that the calls it makes onwards (Stripe) never
outlive the caller who is waiting for them.

The gRPC edge sets it for each call; the Stripe gateway reads it. A context variable: each
asyncio task (each RPC) sees its own.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline: ContextVar[float | None] = ContextVar("billing_caller_deadline", default=None)


def set_remaining(seconds: float | None) -> Token[float | None]:
    """The current request must answer within `seconds` (None: no deadline)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def reset(token: Token[float | None]) -> None:
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the caller gives up (never below 0), or None without a deadline."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
