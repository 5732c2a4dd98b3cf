"""The webhook inbox for operators: list events, replay one (`billing events ...`)."""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.errors import EventNotFound
from billing.domain.payment_events import InboxEvent
from billing.ports import PaymentEventParser, UnitOfWork
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent, EventApplied


@dataclass(frozen=True, slots=True)
class ListInboxEvents:
    units: UnitRunner

    def __call__(self, *, failed_only: bool = False, limit: int = 100) -> list[InboxEvent]:
        return self.units.run(
            lambda unit: list(unit.inbox.recent(failed_only, limit)), read_only=True
        )


@dataclass(frozen=True, slots=True)
class ReplayInboxEvent:
    units: UnitRunner
    parser: PaymentEventParser
    apply_event: ApplyPaymentEvent

    def __call__(self, event_id: str) -> EventApplied:
        """Apply a stored event again, whatever its outcome was; idempotent like any delivery."""

        def load(unit: UnitOfWork) -> InboxEvent:
            row = unit.inbox.get(event_id)
            if row is None:
                raise EventNotFound(f"no inbox event {event_id!r}")
            return row

        row = self.units.run(load, read_only=True)
        return self.apply_event(self.parser.parse(row.payload), replay=True)
