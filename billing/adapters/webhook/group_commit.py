"""Group commit for webhooks: events that arrive together are applied in one transaction.

A webhook is small and its transaction short; what it pays for is the rest: a thread hand-off,
BEGIN and COMMIT round trips, a WAL flush. While one batch is in the database the next events
queue, and the next batch takes all of them (up to `max_batch`): one transaction, one commit, one
hand-off for the lot. A quiet service sends batches of one, so nobody waits for a batch to fill.
Each event still gets its own answer (ApplyPaymentEvent.apply_all applies them one by one inside
the transaction, and alone if the batch as a whole fails), and nothing is answered before it is
committed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from billing.adapters.metrics import Metrics
from billing.domain.payment_events import PaymentEvent
from billing.ports import Offload
from billing.use_cases.apply_payment_event import EventApplied

ApplyAll = Callable[[Sequence[PaymentEvent]], list[EventApplied | Exception]]
MAX_BATCH = 32


def _retrieved(answer: asyncio.Future[EventApplied]) -> None:
    if not answer.cancelled():
        answer.exception()


class GroupCommit:
    """`await group.apply(event)`: the event's outcome once its batch is committed."""

    def __init__(
        self, apply_all: ApplyAll, offload: Offload, metrics: Metrics, max_batch: int = MAX_BATCH
    ) -> None:
        self._apply_all = apply_all
        self._offload = offload
        self._metrics = metrics
        self._max_batch = max_batch
        self._queue: deque[tuple[PaymentEvent, asyncio.Future[EventApplied]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def apply(self, event: PaymentEvent) -> EventApplied:
        answer: asyncio.Future[EventApplied] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieved)  # a sender gone before its answer is no error
        self._queue.append((event, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="webhook-group-commit")
        # Shielded: a sender that hangs up does not withdraw its event from a batch in flight.
        return await asyncio.shield(answer)

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft()
                     for _ in range(min(self._max_batch, len(self._queue)))]
            self._metrics.webhook_batch_size.observe(len(batch))
            try:
                results = await self._offload(
                    partial(self._apply_all, [event for event, _ in batch]))
            except Exception as error:  # the whole batch failed before any event's answer
                results = [error] * len(batch)
            for (_, answer), result in zip(batch, results, strict=True):
                if answer.done():
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
