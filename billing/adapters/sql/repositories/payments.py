"""Payment sessions and refunds (implement PaymentRepository and RefundRepository)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, RowMapping, select

from billing.adapters.sql.repositories.base import SqlRepository, nullable, text
from billing.adapters.sql.tables import payments, refunds
from billing.domain.money import Money
from billing.domain.payment import PaymentSession, PaymentStatus, Refund, RefundStatus


class SqlPaymentRepository(SqlRepository):
    def add(self, session: PaymentSession) -> None:
        self._insert(payments, {"payment_id": session.payment_id, **_payment_values(session)})

    def save(self, session: PaymentSession) -> None:
        self._save(payments, {"payment_id": session.payment_id}, _payment_values(session))

    def by_payment_id(self, payment_id: str) -> PaymentSession | None:
        return self._one(payments.c.payment_id == payment_id)

    def by_request(self, user_id: str, request_id: str) -> PaymentSession | None:
        return self._one((payments.c.user_id == user_id) & (payments.c.request_id == request_id))

    def by_stripe_session(self, stripe_session_id: str) -> PaymentSession | None:
        if not stripe_session_id:
            return None
        return self._one(payments.c.stripe_session_id == stripe_session_id)

    def by_payment_intent(self, payment_intent_id: str) -> PaymentSession | None:
        if not payment_intent_id:
            return None
        return self._one(payments.c.payment_intent_id == payment_intent_id)

    def pending_before(self, cutoff: datetime, limit: int) -> Sequence[PaymentSession]:
        query = (
            select(payments)
            .where(payments.c.status == PaymentStatus.PENDING.value,
                   payments.c.created_at < cutoff)
            .order_by(payments.c.created_at, payments.c.payment_id)
            .limit(limit)
        )
        return [_payment(row) for row in self._all(query)]

    def claim(self, payment_id: str) -> PaymentSession | None:
        row = self._first(
            select(payments).where(payments.c.payment_id == payment_id,
                                   payments.c.status == PaymentStatus.PENDING.value),
            skip_locked=True,
        )
        return _payment(row) if row else None

    def scan(self) -> Iterator[PaymentSession]:
        for row in self._stream(select(payments).order_by(payments.c.payment_id)):
            yield _payment(row)

    def _one(self, condition: ColumnElement[bool]) -> PaymentSession | None:
        row = self._first(select(payments).where(condition))
        return _payment(row) if row else None


def _payment_values(session: PaymentSession) -> dict[str, object]:
    return {
        "user_id": session.user_id,
        "request_id": session.request_id,
        "package_id": session.package_id,
        "coins": session.coins,
        "bonus": session.bonus,
        "amount_minor": session.amount.amount_minor,
        "currency": session.amount.currency,
        "success_url": session.success_url,
        "cancel_url": session.cancel_url,
        "expires_at": session.expires_at,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "status": session.status.value,
        "stripe_session_id": nullable(session.stripe_session_id),
        "checkout_url": session.checkout_url,
        "payment_intent_id": nullable(session.payment_intent_id),
        "coins_credited": session.coins_credited,
        "coins_refunded": session.coins_refunded,
    }


def _payment(row: RowMapping) -> PaymentSession:
    return PaymentSession(
        payment_id=row["payment_id"],
        user_id=row["user_id"],
        request_id=row["request_id"],
        package_id=row["package_id"],
        coins=row["coins"],
        bonus=row["bonus"],
        amount=Money(row["currency"], row["amount_minor"]),
        success_url=row["success_url"],
        cancel_url=row["cancel_url"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        status=PaymentStatus(row["status"]),
        stripe_session_id=text(row["stripe_session_id"]),
        checkout_url=row["checkout_url"],
        payment_intent_id=text(row["payment_intent_id"]),
        coins_credited=row["coins_credited"],
        coins_refunded=row["coins_refunded"],
    )


class SqlRefundRepository(SqlRepository):
    def add(self, refund: Refund) -> None:
        self._insert(refunds, {"refund_key": refund.refund_key, **_refund_values(refund)})

    def save(self, refund: Refund) -> None:
        self._save(refunds, {"refund_key": refund.refund_key}, _refund_values(refund))

    def by_key(self, refund_key: str) -> Refund | None:
        row = self._first(select(refunds).where(refunds.c.refund_key == refund_key))
        return _refund(row) if row else None

    def by_stripe_id(self, stripe_refund_id: str) -> Refund | None:
        if not stripe_refund_id:
            return None
        row = self._first(select(refunds).where(refunds.c.stripe_refund_id == stripe_refund_id))
        return _refund(row) if row else None

    def for_payment(self, payment_id: str) -> Sequence[Refund]:
        query = (
            select(refunds)
            .where(refunds.c.payment_id == payment_id)
            .order_by(refunds.c.created_at, refunds.c.refund_key)
        )
        return [_refund(row) for row in self._all(query)]

    def pending(self, limit: int) -> Sequence[Refund]:
        query = (
            select(refunds)
            .where(refunds.c.status == RefundStatus.PENDING.value)
            .order_by(refunds.c.created_at, refunds.c.refund_key)
            .limit(limit)
        )
        return [_refund(row) for row in self._all(query)]

    def claim(self, refund_key: str) -> Refund | None:
        row = self._first(
            select(refunds).where(refunds.c.refund_key == refund_key,
                                  refunds.c.status == RefundStatus.PENDING.value),
            skip_locked=True,
        )
        return _refund(row) if row else None


def _refund_values(refund: Refund) -> dict[str, object]:
    return {
        "payment_id": refund.payment_id,
        "user_id": refund.user_id,
        "amount_minor": refund.amount.amount_minor,
        "currency": refund.amount.currency,
        "coins": refund.coins,
        "created_at": refund.created_at,
        "updated_at": refund.updated_at,
        "payment_intent_id": refund.payment_intent_id,
        "reason": refund.reason,
        "request_id": refund.request_id,
        "stripe_refund_id": nullable(refund.stripe_refund_id),
        "status": refund.status.value,
        "shortfall": refund.shortfall,
    }


def _refund(row: RowMapping) -> Refund:
    return Refund(
        refund_key=row["refund_key"],
        payment_id=row["payment_id"],
        user_id=row["user_id"],
        amount=Money(row["currency"], row["amount_minor"]),
        coins=row["coins"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        payment_intent_id=row["payment_intent_id"],
        reason=row["reason"],
        request_id=row["request_id"],
        stripe_refund_id=text(row["stripe_refund_id"]),
        status=RefundStatus(row["status"]),
        shortfall=row["shortfall"],
    )
