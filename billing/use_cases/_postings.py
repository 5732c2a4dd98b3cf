"""Writing balance changes and settling a paid session: the one place each is done."""

from __future__ import annotations

from datetime import datetime

from billing.domain.events import (
    LatePaymentCredited,
    PaymentStatusChanged,
    ledger_event,
)
from billing.domain.ledger import Account, LedgerEntry, Posting, TransactionType, ledger_key
from billing.domain.payment import UNPAID_ENDINGS, PaymentSession, PaymentStatus
from billing.ports import UnitOfWork


def credit(unit: UnitOfWork, user_id: str, posting: Posting, now: datetime) -> LedgerEntry:
    account = unit.accounts.lock(user_id)
    return _write(unit, account.credit(posting, now), account)


def debit(unit: UnitOfWork, user_id: str, posting: Posting, now: datetime) -> LedgerEntry:
    account = unit.accounts.lock(user_id)
    return _write(unit, account.debit(posting, now), account)


def debit_what_is_left(
    unit: UnitOfWork, user_id: str, posting: Posting, now: datetime
) -> LedgerEntry:
    account = unit.accounts.lock(user_id)
    return _write(unit, account.debit_what_is_left(posting, now), account)


def _write(unit: UnitOfWork, entry: LedgerEntry, account: Account) -> LedgerEntry:
    written = unit.ledger.add(entry)
    unit.accounts.save(account)
    unit.events.append(ledger_event(written))
    return written


def session_posting(
    session: PaymentSession,
    *,
    key: str,
    type: TransactionType,
    coins: int,
    description: str,
    request_id: str,
    caller: str = "stripe",
) -> Posting:
    """A balance change caused by `session`'s payment (purchase, refund, dispute, reversal)."""
    return Posting(
        key=key,
        type=type,
        coins=coins,
        description=description,
        session_id=session.stripe_session_id,
        payment_id=session.payment_id,
        caller=caller,
        request_id=request_id,
    )


def save_session(unit: UnitOfWork, session: PaymentSession, previous: PaymentStatus) -> None:
    """Persist the session and announce a status change, if there was one."""
    unit.payments.save(session)
    if session.status is not previous:
        unit.events.append(
            PaymentStatusChanged(
                session.payment_id,
                session.stripe_session_id,
                session.user_id,
                previous,
                session.status,
            )
        )


def settle_paid(
    unit: UnitOfWork,
    session: PaymentSession,
    payment_intent_id: str,
    now: datetime,
    *,
    request_id: str,
) -> None:
    """Money was taken for `session`: credit its coins once, whatever state it is in (rule 3)."""
    before = session.status
    previous = session.record_paid(payment_intent_id, now)
    if not session.is_credited:
        posting = session_posting(
            session,
            key=ledger_key("purchase", session.payment_id),
            type=TransactionType.PURCHASE,
            coins=session.total_coins,
            description=f"Purchased {session.coins} coins + {session.bonus} bonus",
            request_id=request_id,
        )
        credit(unit, session.user_id, posting, now)
        session.record_credit(session.total_coins)
    if previous in UNPAID_ENDINGS:
        unit.events.append(
            LatePaymentCredited(
                session.payment_id, session.stripe_session_id, session.user_id, previous
            )
        )
    save_session(unit, session, before)
