"""The payment session aggregate and its state machine (DESIGN.md rules 2, 3 and 6)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing.domain.errors import AlreadyPaid, NotRefundable
from billing.domain.money import Money


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"
    DISPUTED = "DISPUTED"


# Ended without money taken: a paid completion arriving now is still credited, with an alert.
UNPAID_ENDINGS = frozenset({PaymentStatus.FAILED, PaymentStatus.EXPIRED, PaymentStatus.CANCELLED})
# Money was taken at some point: the session's coins were credited.
PAID_STATES = frozenset({PaymentStatus.COMPLETED, PaymentStatus.REFUNDED, PaymentStatus.DISPUTED})
# Where a watch ends: every state but PENDING. A session leaves PENDING for COMPLETED (with its
# coins credited in the same transaction), FAILED, EXPIRED or CANCELLED; one already REFUNDED or
# DISPUTED is sent once. (A late paid completion may still follow an unpaid ending: rule 3.)
WATCH_SETTLED = frozenset(PaymentStatus) - {PaymentStatus.PENDING}


def new_payment_id() -> str:
    return f"pay_{secrets.token_hex(12)}"


def new_refund_key() -> str:
    return f"rfk_{secrets.token_hex(12)}"


@dataclass(slots=True)
class PaymentSession:
    """One purchase of one catalog package, from our row's point of view.

    The row is written before Stripe is called (rule 2), so `stripe_session_id` is empty until
    Stripe answered. Every parameter sent to Stripe is kept here, so a retry resends the same.
    """

    payment_id: str
    user_id: str
    request_id: str
    package_id: str
    coins: int
    bonus: int
    amount: Money
    success_url: str
    cancel_url: str
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    status: PaymentStatus = PaymentStatus.PENDING
    stripe_session_id: str = ""
    checkout_url: str = ""
    payment_intent_id: str = ""
    coins_credited: int = 0
    coins_refunded: int = 0

    @property
    def total_coins(self) -> int:
        return self.coins + self.bonus

    @property
    def is_credited(self) -> bool:
        return self.coins_credited > 0

    def attach_checkout(self, stripe_session_id: str, checkout_url: str, now: datetime) -> None:
        self.stripe_session_id = stripe_session_id
        self.checkout_url = checkout_url
        self.updated_at = now

    def record_paid(self, payment_intent_id: str, now: datetime) -> PaymentStatus | None:
        """A paid completion: money was taken, so the coins are owed whatever our state.

        Returns the previous status when it changed (the caller credits and, for an unpaid
        ending, raises an alert); None when the session was already paid.
        """
        if payment_intent_id and not self.payment_intent_id:
            self.payment_intent_id = payment_intent_id
        if self.status in PAID_STATES:
            return None
        previous = self.status
        self._move(PaymentStatus.COMPLETED, now)
        return previous

    def record_credit(self, coins: int) -> None:
        self.coins_credited = coins

    def expire(self, now: datetime) -> bool:
        return self._move_if(PaymentStatus.PENDING, PaymentStatus.EXPIRED, now)

    def fail(self, now: datetime) -> bool:
        return self._move_if(PaymentStatus.PENDING, PaymentStatus.FAILED, now)

    def cancel(self, now: datetime) -> bool:
        if self.status in PAID_STATES:
            raise AlreadyPaid(f"session {self.stripe_session_id} is already paid")
        return self._move_if(PaymentStatus.PENDING, PaymentStatus.CANCELLED, now)

    def check_refundable(self) -> None:
        if self.status is not PaymentStatus.COMPLETED or not self.payment_intent_id:
            raise NotRefundable(
                f"session {self.stripe_session_id or self.payment_id} is {self.status.value}, "
                "only a COMPLETED payment can be refunded"
            )

    def record_refund_debit(self, coins: int, fully_refunded: bool, now: datetime) -> bool:
        self.coins_refunded += coins
        if fully_refunded:
            return self._move_if(PaymentStatus.COMPLETED, PaymentStatus.REFUNDED, now)
        self.updated_at = now
        return False

    def record_refund_reversal(self, coins: int, now: datetime) -> bool:
        """The refund failed: the money stayed with us, and so do the coins."""
        self.coins_refunded -= coins
        return self._move_if(PaymentStatus.REFUNDED, PaymentStatus.COMPLETED, now)

    def dispute(self, now: datetime) -> bool:
        return self._move_if(PaymentStatus.COMPLETED, PaymentStatus.DISPUTED, now)

    def dispute_won(self, now: datetime) -> bool:
        return self._move_if(PaymentStatus.DISPUTED, PaymentStatus.COMPLETED, now)

    def _move_if(self, expected: PaymentStatus, target: PaymentStatus, now: datetime) -> bool:
        if self.status is not expected:
            return False
        self._move(target, now)
        return True

    def _move(self, target: PaymentStatus, now: datetime) -> None:
        self.status = target
        self.updated_at = now


class RefundStatus(StrEnum):
    PENDING = "PENDING"  # coins debited; Stripe has not confirmed (or not been reached) yet
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # Stripe refused or the refund failed: the debit was reversed


@dataclass(slots=True)
class Refund:
    """A refund of a payment, ours (keyed by `refund_key`) or made elsewhere (keyed by `re_`)."""

    refund_key: str
    payment_id: str
    user_id: str
    amount: Money
    coins: int
    created_at: datetime
    updated_at: datetime
    payment_intent_id: str = ""
    reason: str = ""
    request_id: str = ""
    stripe_refund_id: str = ""
    status: RefundStatus = RefundStatus.PENDING
    shortfall: int = 0  # coins owed back that the user had already spent

    def succeed(self, stripe_refund_id: str, now: datetime) -> bool:
        if stripe_refund_id:
            self.stripe_refund_id = stripe_refund_id
        if self.status is not RefundStatus.PENDING:
            return False
        self.status = RefundStatus.SUCCEEDED
        self.updated_at = now
        return True

    def fail(self, now: datetime) -> bool:
        """Returns True when the debit must now be reversed (it happens once)."""
        if self.status is RefundStatus.FAILED:
            return False
        self.status = RefundStatus.FAILED
        self.updated_at = now
        return True
