from __future__ import annotations

from dataclasses import dataclass

from billing.domain.errors import NotSessionOwner, SessionNotFound
from billing.domain.limits import check_id
from billing.domain.payment import PaymentSession
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentStatusView:
    session: PaymentSession
    balance: int


def owned_session(unit: UnitOfWork, user_id: str, session_id: str) -> PaymentSession:
    """The session `session_id` if `user_id` owns it (the guide's owner check)."""
    session = unit.payments.by_stripe_session(session_id)
    if session is None:
        raise SessionNotFound(f"no checkout session {session_id!r}")
    if session.user_id != user_id:
        raise NotSessionOwner(f"session {session_id!r} belongs to another user")
    return session


@dataclass(frozen=True, slots=True)
class GetPaymentStatus:
    units: UnitRunner

    def __call__(self, user_id: str, session_id: str) -> PaymentStatusView:
        check_id("user_id", user_id)
        check_id("session_id", session_id)

        def read(unit: UnitOfWork) -> PaymentStatusView:
            session = owned_session(unit, user_id, session_id)
            account = unit.accounts.get(user_id)
            return PaymentStatusView(session=session, balance=account.balance if account else 0)

        return self.units.run(read, read_only=True)
