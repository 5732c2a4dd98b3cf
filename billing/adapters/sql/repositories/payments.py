"""Payment sessions and refunds (implement PaymentRepository and RefundRepository)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from billing.adapters.sql.repositories.base import SqlRepository, key_of, nullable, text
from billing.adapters.sql.statements import Dialect, Read, Row, TableSql
from billing.adapters.sql.tables import payments, refunds
from billing.domain.money import Money
from billing.domain.payment import PaymentSession, PaymentStatus, Refund, RefundStatus

if TYPE_CHECKING:
    from billing.adapters.sql.unit_of_work import SqlUnitOfWork

PAYMENT_COLUMNS = (
    "payment_id", "user_id", "request_id", "package_id", "coins", "bonus", "amount_minor",
    "currency", "success_url", "cancel_url", "expires_at", "created_at", "updated_at", "status",
    "stripe_session_id", "checkout_url", "payment_intent_id", "coins_credited", "coins_refunded",
)
REFUND_COLUMNS = (
    "refund_key", "payment_id", "user_id", "amount_minor", "currency", "coins", "created_at",
    "updated_at", "payment_intent_id", "reason", "request_id", "stripe_refund_id", "status",
    "shortfall",
)
# Key numbers of the identity maps (RowCache): 0 is the primary key.
BY_STRIPE_SESSION, BY_REQUEST, BY_PAYMENT_INTENT = 1, 2, 3
BY_STRIPE_REFUND = 1


class PaymentSql:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.table = t = TableSql(dialect, payments, PAYMENT_COLUMNS, ["payment_id"])
        self.keys = (key_of(t, "payment_id"), key_of(t, "stripe_session_id"),
                     key_of(t, "user_id", "request_id"), key_of(t, "payment_intent_id"))
        self.by_id = t.read("by_id", "payment_id = ?")
        self.by_stripe_session = t.read("by_stripe_session", "stripe_session_id = ?")
        self.by_stripe_sessions = t.read(  # Postgres only: locked in the order of the ids
            "by_stripe_sessions", "stripe_session_id = ANY(?) ORDER BY stripe_session_id")
        self.by_request = t.read("by_request", "user_id = ? AND request_id = ?")
        self.by_payment_intent = t.read("by_payment_intent", "payment_intent_id = ?")
        pending = f"status = '{PaymentStatus.PENDING.value}'"
        self.pending_before = t.read("pending_before", (
            f"{pending} AND created_at < ? ORDER BY created_at, payment_id LIMIT ?"
        ))
        self.claim = t.read("claim", f"payment_id = ? AND {pending}", skip_locked=True)
        self.scan = t.statement("scan", f"{t.select} ORDER BY payment_id")


class SqlPaymentRepository(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.payments
        super().__init__(unit, self._sql.table, self._sql.keys)

    def add(self, session: PaymentSession) -> None:
        self._add(_payment_row(session, self._sql.dialect), "payment session")

    def save(self, session: PaymentSession) -> None:
        self._save(_payment_row(session, self._sql.dialect), "payment session")

    def by_payment_id(self, payment_id: str) -> PaymentSession | None:
        return self._one(self._sql.by_id, 0, payment_id, (payment_id,))

    def by_request(self, user_id: str, request_id: str) -> PaymentSession | None:
        key = (user_id, request_id)
        return self._one(self._sql.by_request, BY_REQUEST, key, key)

    def by_stripe_session(self, stripe_session_id: str) -> PaymentSession | None:
        if not stripe_session_id:
            return None
        return self._one(self._sql.by_stripe_session, BY_STRIPE_SESSION, stripe_session_id,
                         (stripe_session_id,))

    def lock_sessions(self, stripe_session_ids: Sequence[str]) -> Sequence[PaymentSession]:
        if not self._sql.dialect.is_postgres:  # in-process: one at a time costs nothing more
            found = (self.by_stripe_session(session_id) for session_id in stripe_session_ids)
            return [session for session in found if session is not None]
        ids = [session_id for session_id in stripe_session_ids if session_id]
        rows = self._all_by(self._sql.by_stripe_sessions, BY_STRIPE_SESSION, ids) if ids else []
        return [_payment(row, self._sql.dialect) for row in rows]

    def by_payment_intent(self, payment_intent_id: str) -> PaymentSession | None:
        if not payment_intent_id:
            return None
        return self._one(self._sql.by_payment_intent, BY_PAYMENT_INTENT, payment_intent_id,
                         (payment_intent_id,))

    def pending_before(self, cutoff: datetime, limit: int) -> Sequence[PaymentSession]:
        rows = self._all(self._sql.pending_before, (self._sql.dialect.time_to_db(cutoff), limit))
        return [_payment(row, self._sql.dialect) for row in rows]

    def claim(self, payment_id: str) -> PaymentSession | None:
        session = self._one(self._sql.claim, 0, payment_id, (payment_id,))
        return session if session and session.status is PaymentStatus.PENDING else None

    def scan(self) -> Iterator[PaymentSession]:
        for row in self._stream(self._sql.scan):
            yield _payment(row, self._sql.dialect)

    def _one(self, read: Read, key_number: int, key: Hashable, params: Sequence[object]
             ) -> PaymentSession | None:
        row = self._find(read, key_number, key, params)
        return _payment(row, self._sql.dialect) if row else None


def _payment_row(session: PaymentSession, dialect: Dialect) -> Row:
    time = dialect.time_to_db
    return (
        session.payment_id, session.user_id, session.request_id, session.package_id,
        session.coins, session.bonus, session.amount.amount_minor, session.amount.currency,
        session.success_url, session.cancel_url, time(session.expires_at),
        time(session.created_at), time(session.updated_at), session.status.value,
        nullable(session.stripe_session_id), session.checkout_url,
        nullable(session.payment_intent_id), session.coins_credited, session.coins_refunded,
    )


def _payment(row: Row, dialect: Dialect) -> PaymentSession:
    (payment_id, user_id, request_id, package_id, coins, bonus, amount_minor, currency,
     success_url, cancel_url, expires_at, created_at, updated_at, status, stripe_session_id,
     checkout_url, payment_intent_id, coins_credited, coins_refunded) = row
    time = dialect.time_from_db
    return PaymentSession(
        payment_id=payment_id,
        user_id=user_id,
        request_id=request_id,
        package_id=package_id,
        coins=coins,
        bonus=bonus,
        amount=Money(currency, amount_minor),
        success_url=success_url,
        cancel_url=cancel_url,
        expires_at=time(expires_at),
        created_at=time(created_at),
        updated_at=time(updated_at),
        status=PaymentStatus(status),
        stripe_session_id=text(stripe_session_id),
        checkout_url=checkout_url,
        payment_intent_id=text(payment_intent_id),
        coins_credited=coins_credited,
        coins_refunded=coins_refunded,
    )


class RefundSql:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.table = t = TableSql(dialect, refunds, REFUND_COLUMNS, ["refund_key"])
        self.keys = (key_of(t, "refund_key"), key_of(t, "stripe_refund_id"))
        self.by_key = t.read("by_key", "refund_key = ?")
        self.by_stripe_id = t.read("by_stripe_id", "stripe_refund_id = ?")
        self.for_payment = t.read("for_payment",
                                  "payment_id = ? ORDER BY created_at, refund_key")
        pending = f"status = '{RefundStatus.PENDING.value}'"
        self.pending = t.read("pending", f"{pending} ORDER BY created_at, refund_key LIMIT ?")
        self.claim = t.read("claim", f"refund_key = ? AND {pending}", skip_locked=True)


class SqlRefundRepository(SqlRepository):
    def __init__(self, unit: SqlUnitOfWork) -> None:
        self._sql = unit.sql.refunds
        super().__init__(unit, self._sql.table, self._sql.keys)

    def add(self, refund: Refund) -> None:
        self._add(_refund_row(refund, self._sql.dialect), "refund")

    def save(self, refund: Refund) -> None:
        self._save(_refund_row(refund, self._sql.dialect), "refund")

    def by_key(self, refund_key: str) -> Refund | None:
        return self._one(self._sql.by_key, 0, refund_key)

    def by_stripe_id(self, stripe_refund_id: str) -> Refund | None:
        if not stripe_refund_id:
            return None
        return self._one(self._sql.by_stripe_id, BY_STRIPE_REFUND, stripe_refund_id)

    def for_payment(self, payment_id: str) -> Sequence[Refund]:
        rows = self._all(self._sql.for_payment, (payment_id,))
        return [_refund(row, self._sql.dialect) for row in rows]

    def pending(self, limit: int) -> Sequence[Refund]:
        return [_refund(row, self._sql.dialect) for row in self._all(self._sql.pending, (limit,))]

    def claim(self, refund_key: str) -> Refund | None:
        refund = self._one(self._sql.claim, 0, refund_key)
        return refund if refund and refund.status is RefundStatus.PENDING else None

    def _one(self, read: Read, key_number: int, key: str) -> Refund | None:
        row = self._find(read, key_number, key, (key,))
        return _refund(row, self._sql.dialect) if row else None


def _refund_row(refund: Refund, dialect: Dialect) -> Row:
    time = dialect.time_to_db
    return (
        refund.refund_key, refund.payment_id, refund.user_id, refund.amount.amount_minor,
        refund.amount.currency, refund.coins, time(refund.created_at), time(refund.updated_at),
        refund.payment_intent_id, refund.reason, refund.request_id,
        nullable(refund.stripe_refund_id), refund.status.value, refund.shortfall,
    )


def _refund(row: Row, dialect: Dialect) -> Refund:
    (refund_key, payment_id, user_id, amount_minor, currency, coins, created_at, updated_at,
     payment_intent_id, reason, request_id, stripe_refund_id, status, shortfall) = row
    return Refund(
        refund_key=refund_key,
        payment_id=payment_id,
        user_id=user_id,
        amount=Money(currency, amount_minor),
        coins=coins,
        created_at=dialect.time_from_db(created_at),
        updated_at=dialect.time_from_db(updated_at),
        payment_intent_id=payment_intent_id,
        reason=reason,
        request_id=request_id,
        stripe_refund_id=text(stripe_refund_id),
        status=RefundStatus(status),
        shortfall=shortfall,
    )
