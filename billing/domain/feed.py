"""The ledger feed's public vocabulary: cursors, where a stream starts, who may read it all.

Every ledger row gets one position in a single global feed after its transaction commits; once a
position has been sent, no row is ever given a lower one, and per user positions follow the
ledger. A cursor is a position made opaque: valid on every replica and under any filter, so a
consumer resumes after the last cursor it processed and sees every row exactly once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from billing.domain.errors import InvalidCursor
from billing.domain.ledger import LedgerEntry

# The token scope that lets a caller read every user's rows (it implies StreamTransactions).
EVERY_USER_SCOPE = "StreamAllTransactions"

_PREFIX = "feed.v1."
_MAX_POSITION = 2**63 - 1  # a BIGINT


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position after which a stream resumes; InvalidCursor if no stream sent `cursor`."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (ValueError, UnicodeError):
        raise InvalidCursor("after_cursor is malformed") from None
    digits = raw.removeprefix(_PREFIX)
    if digits == raw or not digits.isdigit() or not 0 <= int(digits) <= _MAX_POSITION:
        raise InvalidCursor("after_cursor is malformed")
    return int(digits)


def start_after(after_cursor: str, from_now: bool) -> int | None:
    """The position a stream starts after; None for `from_now` (the current end)."""
    if from_now:
        if after_cursor:
            raise InvalidCursor("after_cursor and from_now exclude each other: set one")
        return None
    return decode_cursor(after_cursor) if after_cursor else 0


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One message of a stream: a row, or a checkpoint (no row) saying where the stream is."""

    position: int
    entry: LedgerEntry | None = None

    @property
    def cursor(self) -> str:
        return encode_cursor(self.position)
