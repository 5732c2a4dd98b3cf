"""Live updates: what the streaming use cases wait on.

A process shares one source of wake-ups among all its open streams (the adapter fans it out in
memory), so an idle stream costs memory, never a thread or a connection. Both kinds of stream
count against the process's stream limit: opening one past it raises Overloaded("streams"), and
once the process drains, waiting raises ShuttingDown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from billing.domain.ledger import LedgerEntry


class SessionWaiter(Protocol):
    async def wait(self, timeout: float) -> None:
        """Return once the session may have changed since the last call (at once if it already
        has), or after `timeout` seconds. Wake-ups may be spurious: the caller re-reads."""
        ...

    def close(self) -> None:
        """Stop watching; frees the stream's slot. Idempotent."""
        ...


class FeedFollower(Protocol):
    async def attach(self) -> int:
        """Start receiving live rows: every row with a position above the returned one (of the
        followed user, or of anyone) reaches `next`, in position order."""
        ...

    async def next(self, timeout: float) -> tuple[Sequence[LedgerEntry], int]:
        """The rows received since the last call (waiting up to `timeout` for one: none after
        that), and a position up to which every matching row has been returned. Raises
        SlowConsumer if more rows arrived than the bounded buffer holds."""
        ...

    def close(self) -> None:
        """Stop following; frees the stream's slot. Idempotent."""
        ...


class LiveUpdates(Protocol):
    async def watch_session(self, session_id: str) -> SessionWaiter:
        """Subscribe to changes of a checkout session (`cs_` id): await it before the first
        read, so that no change is missed between the read and the wait."""
        ...

    def follow(self, user_id: str | None) -> FeedFollower:
        """Follow the ledger feed, one user's rows or (None) everyone's; `attach` when ready."""
        ...
