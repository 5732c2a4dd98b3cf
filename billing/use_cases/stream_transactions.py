"""StreamTransactions: ledger rows in feed order from a cursor, then live ones, resumable.

A stream reads the rows already in the feed in pages (through `reads`), then attaches to the
process's shared tail and reads once more up to where the tail started, so that what it sends is
the history up to the tail's start followed by the tail's rows, with no gap and no repeat: a row
is sent only if its position is above the last one sent. Checkpoints (a cursor and no row) come
first and after `idle_checkpoint_s` without a message, so a filtered or `from_now` consumer
always has a recent cursor to resume from without rescanning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from billing.domain.errors import InvalidField
from billing.domain.feed import FeedItem, start_after
from billing.domain.ledger import LedgerEntry
from billing.domain.limits import MAX_ID_LENGTH
from billing.ports import LiveUpdates, UnitOfWork
from billing.use_cases._unit import UnitRunner


@dataclass(frozen=True, slots=True)
class StreamTransactions:
    units: UnitRunner  # its offload is where the catch-up reads run
    live: LiveUpdates
    idle_checkpoint_s: float = 5.0
    page: int = 500

    async def __call__(
        self, user_id: str, after_cursor: str, from_now: bool
    ) -> AsyncIterator[FeedItem]:
        if len(user_id) > MAX_ID_LENGTH or not user_id.isprintable():
            raise InvalidField("user_id", f"must be at most {MAX_ID_LENGTH} printable characters")
        who = user_id or None
        start = start_after(after_cursor, from_now)
        follower = self.live.follow(who)
        try:
            if start is None:
                start = await self.units.run_async(_feed_end, read_only=True)
            yield FeedItem(start)
            sent = start
            async for entry in self._history(who, sent, None):  # what is there already
                yield FeedItem(entry.position, entry)
                sent = entry.position
            tail_start = await follower.attach()
            async for entry in self._history(who, sent, tail_start):  # came in meanwhile
                yield FeedItem(entry.position, entry)
                sent = entry.position
            sent = max(sent, tail_start)
            while True:
                rows, upto = await follower.next(self.idle_checkpoint_s)
                fresh = [row for row in rows if row.position > sent]
                for entry in fresh:
                    yield FeedItem(entry.position, entry)
                    sent = entry.position
                if not rows:  # idle: where the stream is now, to resume from
                    sent = max(sent, upto)
                    yield FeedItem(sent)
        finally:
            follower.close()

    async def _history(
        self, user_id: str | None, after: int, upto: int | None
    ) -> AsyncIterator[LedgerEntry]:
        while upto is None or after < upto:
            def read(unit: UnitOfWork, after: int = after) -> Sequence[LedgerEntry]:
                return unit.ledger.feed(after, user_id, self.page, upto)

            rows = await self.units.run_async(read, read_only=True)
            for entry in rows:
                yield entry
            if len(rows) < self.page:
                return
            after = rows[-1].position


def _feed_end(unit: UnitOfWork) -> int:
    return unit.ledger.feed_end()
