"""GroupCommit: webhooks that arrive while a batch is in the database are applied together in the
next one (one transaction), each gets its own answer, and a lone webhook is not kept waiting."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence

from billing.adapters.metrics import Metrics
from billing.adapters.stripe_gateway.events import translate_event
from billing.adapters.webhook import GroupCommit
from billing.domain.errors import StoreUnavailable
from billing.domain.payment_events import InboxOutcome, PaymentEvent
from billing.use_cases.apply_payment_event import EventApplied

from .harness import Service

WAIT_S = 10.0


class Recorder:
    """apply_all as the use case offers it, recording the batches; the first one waits for
    `release` (so the next events queue behind it); event ids in `refuse` fail on their own."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.refuse: set[str] = set()

    def __call__(self, events: Sequence[PaymentEvent]) -> list[EventApplied | Exception]:
        self.batches.append([event.event_id for event in events])
        self.entered.set()
        assert self.release.wait(WAIT_S)
        return [StoreUnavailable("down") if event.event_id in self.refuse
                else EventApplied(InboxOutcome.APPLIED) for event in events]


def event(event_id: str) -> PaymentEvent:
    return PaymentEvent(event_id=event_id, type="checkout.session.completed", created=None)  # type: ignore[arg-type]


def test_events_queued_behind_a_batch_are_committed_together_with_their_own_answers():
    recorder, metrics = Recorder(), Metrics()
    group = GroupCommit(recorder, asyncio.to_thread, metrics)
    recorder.refuse = {"evt_3"}

    async def scenario() -> list[EventApplied | BaseException]:
        first = asyncio.create_task(group.apply(event("evt_1")))
        await asyncio.to_thread(recorder.entered.wait, WAIT_S)  # evt_1's batch is in flight
        queued = [asyncio.create_task(group.apply(event(f"evt_{n}"))) for n in (2, 3, 4)]
        await asyncio.sleep(0)  # let them queue
        recorder.release.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    answers = asyncio.run(scenario())

    assert recorder.batches == [["evt_1"], ["evt_2", "evt_3", "evt_4"]]
    assert [type(answer).__name__ for answer in answers] == [
        "EventApplied", "EventApplied", "StoreUnavailable", "EventApplied"]
    assert metrics.registry.get_sample_value("billing_webhook_batch_size_count") == 2
    assert metrics.registry.get_sample_value("billing_webhook_batch_size_sum") == 4


def test_a_batch_is_never_larger_than_its_bound():
    recorder = Recorder()
    recorder.release.set()
    group = GroupCommit(recorder, asyncio.to_thread, Metrics(), max_batch=2)

    async def scenario() -> None:
        await asyncio.gather(*(group.apply(event(f"evt_{n}")) for n in range(5)))

    asyncio.run(scenario())

    assert [len(batch) for batch in recorder.batches] == [2, 2, 1]
    assert sorted(e for batch in recorder.batches for e in batch) == [f"evt_{n}" for n in range(5)]


def test_through_the_use_case_concurrent_duplicates_credit_once():
    service = Service()
    events = service.checkout("alice")
    document = events.completed()
    paid = translate_event(document, json.dumps(document))
    group = GroupCommit(service.apply_event.apply_all, asyncio.to_thread, service.metrics)

    async def scenario() -> list[EventApplied]:
        return await asyncio.gather(*(group.apply(paid) for _ in range(10)))

    answers = asyncio.run(scenario())

    assert sum(not answer.duplicate for answer in answers) == 1
    assert service.balance("alice") == 1200 and len(service.ledger()) == 1
    service.assert_consistent()
