"""Settle what the webhook did not (issue 6): stale sessions, pending refunds, lost events.

Each session or refund is claimed in its own unit (SKIP LOCKED on Postgres) and settled while
claimed, through the same code the webhook uses; replicas reconciling at once never share work,
and whatever they do twice is idempotent anyway (ledger keys, Stripe idempotency keys).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from billing.domain.errors import BillingError, GatewayRejected
from billing.domain.payment_events import InboxOutcome
from billing.ports import (
    CheckoutSnapshot,
    PaymentEventParser,
    PaymentGateway,
    RefundSnapshot,
    UnitOfWork,
)
from billing.use_cases import _postings
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.refund_payment import apply_refund_snapshot, refund_params, reverse_refund

log = logging.getLogger(__name__)
BATCH = 1000


@dataclass(slots=True)
class ReconcileReport:
    fixes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.fixes.values())


@dataclass(frozen=True, slots=True)
class Reconcile:
    units: UnitRunner
    gateway: PaymentGateway
    parser: PaymentEventParser
    apply_event: ApplyPaymentEvent
    after: timedelta = timedelta(seconds=900)

    async def __call__(self) -> ReconcileReport:
        report = ReconcileReport()
        for step in (self._sessions, self._refunds, self._undelivered, self._unmatched):
            try:
                await step(report)
            except BillingError as error:  # Stripe or the database down: the next pass retries
                log.warning("reconciliation step %s stopped: %s", step.__name__, error.message)
                report.errors.append(f"{step.__name__}: {error.message}")
        return report

    # Stripe is asked first, with no row locked and no connection held; the answer is then
    # applied in a unit that claims the row. Two replicas may both ask Stripe about one session
    # (a read, or a write under the same Idempotency-Key); only one of them applies the answer.
    async def _sessions(self, report: ReconcileReport) -> None:
        cutoff = self.units.now() - self.after
        stale = await self.units.run_async(
            lambda unit: [
                (s.payment_id, s.stripe_session_id)
                for s in unit.payments.pending_before(cutoff, BATCH)
            ],
            read_only=True,
        )
        for payment_id, stripe_session_id in stale:
            snapshot = await self._checkout_now(stripe_session_id, payment_id)
            fix = await self.units.run_async(
                partial(self._settle_session, payment_id=payment_id, snapshot=snapshot)
            )
            if fix:
                report.fixes[fix] += 1
                log.info("reconciled session", extra={"payment_id": payment_id, "fix": fix})

    async def _checkout_now(
        self, stripe_session_id: str, payment_id: str
    ) -> CheckoutSnapshot | None:
        if not stripe_session_id:
            return None
        snapshot = await self.gateway.retrieve_checkout(stripe_session_id)
        if snapshot.status == "open" and snapshot.expires_at <= self.units.now():
            snapshot = await self.gateway.expire_checkout(stripe_session_id, payment_id)
        return snapshot

    def _settle_session(
        self, unit: UnitOfWork, payment_id: str, snapshot: CheckoutSnapshot | None
    ) -> str:
        session = unit.payments.claim(payment_id)
        if session is None:
            return ""  # settled meanwhile, or another replica has it
        now = self.units.now()
        before = session.status
        if not session.stripe_session_id:
            session.expire(now)  # Stripe never answered: no customer ever saw its URL (rule 2)
            _postings.save_session(unit, session, before)
            return "expired_locally"
        if snapshot is None:
            return ""  # it got its session id meanwhile: the next pass asks Stripe
        if snapshot.is_paid:
            _postings.settle_paid(
                unit, session, snapshot.payment_intent_id, now, request_id="reconcile"
            )
            return "credited"
        if snapshot.status == "expired":
            session.expire(now)
            _postings.save_session(unit, session, before)
            return "expired"
        return ""

    async def _refunds(self, report: ReconcileReport) -> None:
        pending = await self.units.run_async(
            lambda unit: list(unit.refunds.pending(BATCH)), read_only=True
        )
        for refund in pending:
            snapshot: RefundSnapshot | None
            try:
                if refund.stripe_refund_id:
                    snapshot = await self.gateway.retrieve_refund(refund.stripe_refund_id)
                else:  # never reached Stripe: ask again with the same Idempotency-Key
                    snapshot = await self.gateway.refund(refund_params(refund, refund.reason))
            except GatewayRejected:
                snapshot = None  # Stripe refuses it: the debit is reversed
            fix = await self.units.run_async(
                partial(self._settle_refund, refund_key=refund.refund_key, snapshot=snapshot)
            )
            if fix:
                report.fixes[fix] += 1

    def _settle_refund(
        self, unit: UnitOfWork, refund_key: str, snapshot: RefundSnapshot | None
    ) -> str:
        refund = unit.refunds.claim(refund_key)
        if refund is None:
            return ""
        if snapshot is None:
            reverse_refund(unit, refund_key, self.units, refund)
            return "refund_reversed"
        apply_refund_snapshot(unit, refund, snapshot.refund_id, snapshot.status, self.units)
        return {
            "succeeded": "refund_succeeded",
            "failed": "refund_reversed",
            "canceled": "refund_reversed",
        }.get(snapshot.status, "")

    async def _undelivered(self, report: ReconcileReport) -> None:
        for event in await self.gateway.undelivered_events(BATCH):
            result = await self.units.offload(partial(self.apply_event, event))
            if not result.duplicate and result.outcome is InboxOutcome.APPLIED:
                report.fixes["event_applied"] += 1

    async def _unmatched(self, report: ReconcileReport) -> None:
        due = await self.units.run_async(
            lambda unit: list(unit.inbox.due(self.units.now(), BATCH)), read_only=True
        )
        for row in due:
            event = self.parser.parse(row.payload)
            result = await self.units.offload(partial(self.apply_event, event))
            if result.outcome is InboxOutcome.APPLIED:
                report.fixes["unmatched_applied"] += 1
            elif result.outcome is InboxOutcome.PARKED:
                report.fixes["parked"] += 1
