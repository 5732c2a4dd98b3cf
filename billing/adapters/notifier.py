"""Notifiers: every domain event becomes a log line with its ids and a metric (LoggingNotifier),
and several notifiers can be one (Notifiers)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from billing.adapters.metrics import Metrics
from billing.domain.events import (
    CoinsCredited,
    CoinsDebited,
    DomainEvent,
    LatePaymentCredited,
    PaymentEventRejected,
    PaymentStatusChanged,
)
from billing.domain.ledger import LedgerEntry
from billing.domain.payment import PaymentStatus
from billing.ports import Notifier

log = logging.getLogger("billing.events")


class Notifiers:
    """Implements Notifier by publishing to each of several, in order."""

    def __init__(self, *notifiers: Notifier) -> None:
        self._notifiers = notifiers

    def publish(self, events: Sequence[DomainEvent]) -> None:
        for notifier in self._notifiers:
            try:
                notifier.publish(events)
            except Exception:  # a notification problem must never undo a committed change
                log.exception("could not publish events")


class LoggingNotifier:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def publish(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            try:
                self._publish(event)
            except Exception:  # a notification problem must never undo a committed change
                log.exception("could not publish %s", type(event).__name__)

    def _publish(self, event: DomainEvent) -> None:
        m = self._metrics
        match event:
            case CoinsCredited(entry):
                m.coins.labels("credit", entry.type.value).inc(entry.coins)
                log.info("coins credited", extra=_entry_fields(entry))
            case CoinsDebited(entry):
                m.coins.labels("debit", entry.type.value).inc(-entry.coins)
                if entry.shortfall:
                    m.shortfalls.inc(entry.shortfall)
                    log.warning(
                        "coins already spent: shortfall recorded", extra=_entry_fields(entry)
                    )
                else:
                    log.info("coins debited", extra=_entry_fields(entry))
            case PaymentStatusChanged():
                if event.current is not PaymentStatus.PENDING:
                    m.sessions_final.labels(event.current.value).inc()
                log.info(
                    "payment status changed",
                    extra={
                        "payment_id": event.payment_id,
                        "session_id": event.session_id,
                        "user_id": event.user_id,
                        "previous": event.previous.value,
                        "status": event.current.value,
                    },
                )
            case LatePaymentCredited():
                m.late_payments.inc()
                log.error(
                    "ALERT paid completion for a session that had ended unpaid; coins credited",
                    extra={
                        "payment_id": event.payment_id,
                        "session_id": event.session_id,
                        "user_id": event.user_id,
                        "previous": event.previous.value,
                    },
                )
            case PaymentEventRejected():
                m.rejected_events.inc()
                log.error(
                    "ALERT provider event rejected",
                    extra={
                        "event_id": event.event_id,
                        "event_type": event.event_type,
                        "error": event.error,
                    },
                )


def _entry_fields(entry: LedgerEntry) -> dict[str, object]:
    return {
        "user_id": entry.user_id,
        "coins": entry.coins,
        "balance_after": entry.balance_after,
        "type": entry.type.value,
        "key": entry.key,
        "session_id": entry.session_id,
        "payment_id": entry.payment_id,
        "shortfall": entry.shortfall,
        "caller": entry.caller,
        "request_id": entry.request_id,
    }
