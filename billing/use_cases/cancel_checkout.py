"""Cancel an unpaid checkout: expire it on Stripe first, so nobody can pay it afterwards."""

from __future__ import annotations

from dataclasses import dataclass

from billing.domain.errors import AlreadyPaid
from billing.domain.limits import check_id
from billing.domain.payment import PAID_STATES, PaymentStatus
from billing.ports import CheckoutSnapshot, PaymentGateway, UnitOfWork
from billing.use_cases._postings import save_session, settle_paid
from billing.use_cases._unit import UnitRunner
from billing.use_cases.get_payment_status import owned_session


@dataclass(frozen=True, slots=True)
class CancelCheckout:
    units: UnitRunner
    gateway: PaymentGateway

    async def __call__(self, user_id: str, session_id: str) -> PaymentStatus:
        check_id("user_id", user_id)
        check_id("session_id", session_id)

        def look(unit: UnitOfWork) -> tuple[PaymentStatus, str]:
            session = owned_session(unit, user_id, session_id)
            return session.status, session.payment_id

        async with self.gateway.reserve():
            status, payment_id = await self.units.run_async(look, read_only=True)
            if status in PAID_STATES:
                raise AlreadyPaid(f"session {session_id!r} is already paid")
            if status is not PaymentStatus.PENDING:
                return status
            snapshot = await self.gateway.expire_checkout(session_id, payment_id)
        status = await self.units.run_async(
            lambda unit: self._settle(unit, user_id, session_id, snapshot)
        )
        if status in PAID_STATES:
            raise AlreadyPaid(f"session {session_id!r} was paid before it could be cancelled")
        return status

    def _settle(
        self, unit: UnitOfWork, user_id: str, session_id: str, snapshot: CheckoutSnapshot
    ) -> PaymentStatus:
        session = owned_session(unit, user_id, session_id)
        now = self.units.now()
        if snapshot.is_paid:
            # The customer paid while we were expiring: money taken means coins given.
            settle_paid(unit, session, snapshot.payment_intent_id, now, request_id="cancel")
        else:
            before = session.status
            session.cancel(now)
            save_session(unit, session, before)
        return session.status
