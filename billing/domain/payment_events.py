"""Events reported by the payment provider, already translated out of Stripe's JSON.

The webhook and reconciliation adapters build a `PaymentEvent`; the apply-payment-event use case
decides from our own rows, never from the event's metadata alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from billing.domain.money import Money


class EventKind(StrEnum):
    CHECKOUT_COMPLETED = "checkout.session.completed"
    CHECKOUT_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
    CHECKOUT_ASYNC_FAILED = "checkout.session.async_payment_failed"
    CHECKOUT_EXPIRED = "checkout.session.expired"
    PAYMENT_INTENT_SUCCEEDED = "payment_intent.succeeded"
    PAYMENT_INTENT_FAILED = "payment_intent.payment_failed"
    REFUND_CREATED = "refund.created"
    REFUND_UPDATED = "refund.updated"
    REFUND_FAILED = "refund.failed"
    CHARGE_REFUNDED = "charge.refunded"
    DISPUTE_CREATED = "charge.dispute.created"
    DISPUTE_CLOSED = "charge.dispute.closed"


CHECKOUT_KINDS = frozenset(
    {
        EventKind.CHECKOUT_COMPLETED,
        EventKind.CHECKOUT_ASYNC_SUCCEEDED,
        EventKind.CHECKOUT_ASYNC_FAILED,
        EventKind.CHECKOUT_EXPIRED,
    }
)
REFUND_KINDS = frozenset(
    {EventKind.REFUND_CREATED, EventKind.REFUND_UPDATED, EventKind.REFUND_FAILED}
)


def event_kind(event_type: str) -> EventKind | None:
    try:
        return EventKind(event_type)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What one provider event says, in our terms. Empty strings mean "not in the event"."""

    event_id: str
    type: str
    created: datetime
    payload: str = ""
    stripe_session_id: str = ""
    payment_id: str = ""  # metadata.payment_id: ours, written when the session was created
    payment_intent_id: str = ""
    payment_status: str = ""  # checkout sessions: paid | unpaid | no_payment_required
    amount: Money | None = None  # the object's amount (session total, refund or dispute amount)
    refund_id: str = ""
    refund_key: str = ""  # metadata.refund_key: ours, written when we asked for the refund
    refund_status: str = ""  # pending | requires_action | succeeded | failed | canceled
    dispute_id: str = ""
    dispute_status: str = ""  # won | lost | needs_response | ...
    amount_refunded: int | None = None  # charge.refunded: a running total, never acted on
    malformed: str = ""  # why the object could not be read; such an event is rejected

    @property
    def kind(self) -> EventKind | None:
        return event_kind(self.type)


class InboxOutcome(StrEnum):
    APPLIED = "applied"
    UNMATCHED = "unmatched"  # no session yet: retried by reconciliation, then parked
    REJECTED = "rejected"  # can never apply: amount/currency mismatch, malformed object
    IGNORED = "ignored"  # a type we do not handle
    PARKED = "parked"  # unmatched after BILLING_EVENT_MAX_ATTEMPTS tries


FAILED_OUTCOMES = frozenset({InboxOutcome.UNMATCHED, InboxOutcome.REJECTED, InboxOutcome.PARKED})


@dataclass(slots=True)
class InboxEvent:
    """One received provider event, stored with its outcome in the same transaction."""

    event_id: str
    type: str
    payload: str
    received_at: datetime
    outcome: InboxOutcome
    processed_at: datetime | None = None
    attempts: int = 1
    error: str = ""
    next_attempt_at: datetime | None = None


def unmatched_retry_delay(attempts: int) -> timedelta:
    """Backoff before reconciliation retries an unmatched event: 30 s doubling, at most 1 h."""
    return min(timedelta(seconds=30 * 2 ** min(attempts - 1, 10)), timedelta(hours=1))
