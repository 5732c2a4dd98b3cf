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
from billing.ports import PaymentEventParser, PaymentGateway, UnitOfWork
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

    def __call__(self) -> ReconcileReport:
        report = ReconcileReport()
        for step in (self._sessions, self._refunds, self._undelivered, self._unmatched):
            try:
                step(report)
            except BillingError as error:  # Stripe or the database down: the next pass retries
                log.warning("reconciliation step %s stopped: %s", step.__name__, error.message)
                report.errors.append(f"{step.__name__}: {error.message}")
        return report

    def _sessions(self, report: ReconcileReport) -> None:
        cutoff = self.units.now() - self.after
        stale = self.units.run(
            lambda unit: [s.payment_id for s in unit.payments.pending_before(cutoff, BATCH)],
            read_only=True,
        )
        for payment_id in stale:
            fix = self.units.run(partial(self._settle_session, payment_id=payment_id))
            if fix:
                report.fixes[fix] += 1
                log.info("reconciled session", extra={"payment_id": payment_id, "fix": fix})

    def _settle_session(self, unit: UnitOfWork, payment_id: str) -> str:
        session = unit.payments.claim(payment_id)
        if session is None:
            return ""  # settled meanwhile, or another replica has it
        now = self.units.now()
        before = session.status
        if not session.stripe_session_id:
            session.expire(now)  # Stripe never answered: no customer ever saw its URL (rule 2)
            _postings.save_session(unit, session, before)
            return "expired_locally"
        snapshot = self.gateway.retrieve_checkout(session.stripe_session_id)
        if snapshot.status == "open" and snapshot.expires_at <= now:
            snapshot = self.gateway.expire_checkout(session.stripe_session_id, payment_id)
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

    def _refunds(self, report: ReconcileReport) -> None:
        pending = self.units.run(
            lambda unit: [r.refund_key for r in unit.refunds.pending(BATCH)], read_only=True
        )
        for refund_key in pending:
            fix = self.units.run(partial(self._settle_refund, refund_key=refund_key))
            if fix:
                report.fixes[fix] += 1

    def _settle_refund(self, unit: UnitOfWork, refund_key: str) -> str:
        refund = unit.refunds.claim(refund_key)
        if refund is None:
            return ""
        try:
            if refund.stripe_refund_id:
                snapshot = self.gateway.retrieve_refund(refund.stripe_refund_id)
            else:  # never reached Stripe: ask again with the same Idempotency-Key
                snapshot = self.gateway.refund(refund_params(refund, refund.reason))
        except GatewayRejected:
            reverse_refund(unit, refund_key, self.units, refund)
            return "refund_reversed"
        apply_refund_snapshot(unit, refund, snapshot.refund_id, snapshot.status, self.units)
        return {
            "succeeded": "refund_succeeded",
            "failed": "refund_reversed",
            "canceled": "refund_reversed",
        }.get(snapshot.status, "")

    def _undelivered(self, report: ReconcileReport) -> None:
        for event in self.gateway.undelivered_events(BATCH):
            result = self.apply_event(event)
            if not result.duplicate and result.outcome is InboxOutcome.APPLIED:
                report.fixes["event_applied"] += 1

    def _unmatched(self, report: ReconcileReport) -> None:
        due = self.units.run(
            lambda unit: list(unit.inbox.due(self.units.now(), BATCH)), read_only=True
        )
        for row in due:
            result = self.apply_event(self.parser.parse(row.payload))
            if result.outcome is InboxOutcome.APPLIED:
                report.fixes["unmatched_applied"] += 1
            elif result.outcome is InboxOutcome.PARKED:
                report.fixes["parked"] += 1
