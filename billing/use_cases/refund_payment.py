"""Full refund of a paid session (rule 6): debit first in one transaction, then ask Stripe.

Stripe unreachable: the refund stays PENDING with the coins debited; a retry with the same
request_id, or reconciliation, finishes it with the same Idempotency-Key. Stripe refusing it:
the debit is reversed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from billing.domain.errors import CoinsAlreadySpent, GatewayRejected
from billing.domain.ledger import TransactionType, ledger_key
from billing.domain.limits import check_id, check_key, check_reason
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus, Refund, RefundStatus, new_refund_key
from billing.ports import PaymentGateway, RefundParams, RefundSnapshot, UnitOfWork
from billing.use_cases import _postings
from billing.use_cases._idempotency import params_hash, remember, replay
from billing.use_cases._unit import UnitRunner
from billing.use_cases.get_payment_status import owned_session

RPC = "RefundPayment"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundCommand:
    user_id: str
    session_id: str
    reason: str
    request_id: str
    caller: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundResult:
    status: PaymentStatus
    coins_debited: int
    new_balance: int


@dataclass(frozen=True, slots=True)
class RefundPayment:
    units: UnitRunner
    gateway: PaymentGateway

    async def __call__(self, command: RefundCommand) -> RefundResult:
        check_id("user_id", command.user_id)
        check_id("session_id", command.session_id)
        check_reason("reason", command.reason)
        check_key("request_id", command.request_id)
        fingerprint = params_hash(session_id=command.session_id, reason=command.reason)

        async with self.gateway.reserve():  # Overloaded before the debit is written
            begun = await self.units.run_async(
                lambda unit: self._begin(unit, command, fingerprint)
            )
            if isinstance(begun, RefundResult):
                return begun
            try:
                snapshot = await self.gateway.refund(refund_params(begun, command.reason))
            except GatewayRejected:
                await self.units.run_async(
                    lambda unit: reverse_refund(unit, begun.refund_key, self.units)
                )
                raise
        return await self.units.run_async(
            lambda unit: self._finish(unit, command, fingerprint, snapshot, begun.refund_key)
        )

    def _begin(
        self, unit: UnitOfWork, command: RefundCommand, fingerprint: str
    ) -> RefundResult | Refund:
        stored = replay(unit, RPC, command.user_id, command.request_id, fingerprint)
        if stored is not None:
            return _result_of(stored)
        session = owned_session(unit, command.user_id, command.session_id)
        for earlier in unit.refunds.for_payment(session.payment_id):
            if earlier.request_id == command.request_id and earlier.status is not (
                RefundStatus.FAILED
            ):
                return earlier  # resume: the debit is done, Stripe may not have answered
        session.check_refundable()
        account = unit.accounts.lock(command.user_id)
        owed = session.total_coins - session.coins_refunded
        if account.balance < owed:
            raise CoinsAlreadySpent(
                f"user has {account.balance} coins, the refund takes back {owed}"
            )
        now = self.units.now()
        refunded = sum(
            r.amount.amount_minor
            for r in unit.refunds.for_payment(session.payment_id)
            if r.status is not RefundStatus.FAILED
        )
        refund = Refund(
            refund_key=new_refund_key(),
            payment_id=session.payment_id,
            payment_intent_id=session.payment_intent_id,
            user_id=session.user_id,
            # What is left: Stripe refuses more than the charge's unrefunded amount.
            amount=Money(session.amount.currency, session.amount.amount_minor - refunded),
            coins=owed,
            created_at=now,
            updated_at=now,
            reason=command.reason,
            request_id=command.request_id,
        )
        posting = _postings.session_posting(
            session,
            key=ledger_key("refund", refund.refund_key),
            type=TransactionType.REFUND,
            coins=owed,
            description=f"Refund: {command.reason}" if command.reason else "Refund",
            request_id=command.request_id,
            caller=command.caller,
        )
        _postings.debit(unit, session.user_id, posting, now)
        before = session.status
        session.record_refund_debit(owed, fully_refunded=True, now=now)
        _postings.save_session(unit, session, before)
        unit.refunds.add(refund)
        return refund

    def _finish(
        self,
        unit: UnitOfWork,
        command: RefundCommand,
        fingerprint: str,
        snapshot: RefundSnapshot,
        refund_key: str,
    ) -> RefundResult:
        stored = replay(unit, RPC, command.user_id, command.request_id, fingerprint)
        if stored is not None:  # a concurrent duplicate of this request finished first
            return _result_of(stored)
        refund = unit.refunds.by_key(refund_key)
        assert refund is not None
        apply_refund_snapshot(unit, refund, snapshot.refund_id, snapshot.status, self.units)
        session = unit.payments.by_payment_id(refund.payment_id)
        account = unit.accounts.get(command.user_id)
        assert session is not None and account is not None
        result = RefundResult(
            status=session.status,
            # refund.failed may have overtaken Stripe's answer and given the coins back
            coins_debited=0
            if refund.status is RefundStatus.FAILED
            else refund.coins - refund.shortfall,
            new_balance=account.balance,
        )
        response = {
            "status": result.status.value,
            "coins_debited": result.coins_debited,
            "new_balance": result.new_balance,
        }
        remember(
            unit, RPC, command.user_id, command.request_id, fingerprint, response, self.units.now()
        )
        return result


def _result_of(stored: Mapping[str, object]) -> RefundResult:
    return RefundResult(
        status=PaymentStatus(str(stored["status"])),
        coins_debited=int(str(stored["coins_debited"])),
        new_balance=int(str(stored["new_balance"])),
    )


def refund_params(refund: Refund, reason: str) -> RefundParams:
    return RefundParams(
        refund_key=refund.refund_key,
        payment_id=refund.payment_id,
        payment_intent_id=refund.payment_intent_id,
        amount=refund.amount,
        reason=reason,
    )


def apply_refund_snapshot(
    unit: UnitOfWork, refund: Refund, stripe_refund_id: str, status: str, units: UnitRunner
) -> None:
    """Bring our refund in line with what Stripe says about it (response, event, reconcile)."""
    now = units.now()
    if status in ("failed", "canceled"):
        if stripe_refund_id:
            refund.stripe_refund_id = stripe_refund_id
        reverse_refund(unit, refund.refund_key, units, refund)
        return
    if status == "succeeded":
        refund.succeed(stripe_refund_id, now)
    elif stripe_refund_id:
        refund.stripe_refund_id = stripe_refund_id
    unit.refunds.save(refund)


def reverse_refund(
    unit: UnitOfWork, refund_key: str, units: UnitRunner, refund: Refund | None = None
) -> None:
    """The refund will not happen: give the debited coins back, once (REFUND_REVERSAL)."""
    refund = refund or unit.refunds.by_key(refund_key)
    assert refund is not None
    now = units.now()
    if not refund.fail(now):
        unit.refunds.save(refund)
        return
    session = unit.payments.by_payment_id(refund.payment_id)
    assert session is not None
    taken = refund.coins - refund.shortfall
    if taken > 0:
        posting = _postings.session_posting(
            session,
            key=ledger_key("refund_reversal", refund.refund_key),
            type=TransactionType.REFUND_REVERSAL,
            coins=taken,
            description="Refund failed: coins returned",
            request_id=refund.request_id,
        )
        _postings.credit(unit, session.user_id, posting, now)
    before = session.status
    session.record_refund_reversal(refund.coins, now)
    _postings.save_session(unit, session, before)
    unit.refunds.save(refund)
