"""Domain events: what happened, published to the Notifier after the unit of work commits."""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.ledger import LedgerEntry
from billing.domain.payment import PaymentStatus


@dataclass(frozen=True, slots=True)
class CoinsCredited:
    entry: LedgerEntry


@dataclass(frozen=True, slots=True)
class CoinsDebited:
    entry: LedgerEntry

    @property
    def shortfall(self) -> int:
        return self.entry.shortfall


@dataclass(frozen=True, slots=True)
class PaymentStatusChanged:
    payment_id: str
    session_id: str
    user_id: str
    previous: PaymentStatus
    current: PaymentStatus


@dataclass(frozen=True, slots=True)
class LatePaymentCredited:
    """Alert: money arrived for a session that had already ended unpaid; coins were credited."""

    payment_id: str
    session_id: str
    user_id: str
    previous: PaymentStatus


@dataclass(frozen=True, slots=True)
class PaymentEventRejected:
    """Alert: a provider event could never apply (amount mismatch, malformed object)."""

    event_id: str
    event_type: str
    error: str


DomainEvent = (
    CoinsCredited | CoinsDebited | PaymentStatusChanged | LatePaymentCredited | PaymentEventRejected
)


def ledger_event(entry: LedgerEntry) -> DomainEvent:
    return CoinsCredited(entry) if entry.coins > 0 else CoinsDebited(entry)
