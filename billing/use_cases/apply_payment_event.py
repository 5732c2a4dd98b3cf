"""Apply one provider event (rule 7): inbox row and effects in one transaction.

Decisions come from our rows, never from arrival order: duplicates change nothing, two distinct
events for one change credit once (the purchase's ledger key), and a late event never moves a
session backwards, except a paid completion, which is always credited (rule 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from billing.domain.events import PaymentEventRejected
from billing.domain.ledger import TransactionType, ledger_key
from billing.domain.limits import DEFAULT_EVENT_MAX_ATTEMPTS
from billing.domain.payment import PAID_STATES, PaymentSession, Refund, RefundStatus
from billing.domain.payment_events import (
    CHECKOUT_KINDS,
    REFUND_KINDS,
    EventKind,
    InboxEvent,
    InboxOutcome,
    PaymentEvent,
    unmatched_retry_delay,
)
from billing.ports import UnitOfWork
from billing.use_cases import _postings
from billing.use_cases._unit import UnitRunner
from billing.use_cases.refund_payment import apply_refund_snapshot

# A redelivery of these is applied again (they may match now); any other is a duplicate.
RETRIED_OUTCOMES = frozenset({InboxOutcome.UNMATCHED, InboxOutcome.PARKED})


@dataclass(frozen=True, slots=True)
class EventApplied:
    outcome: InboxOutcome
    duplicate: bool = False
    error: str = ""


class _Verdict(Exception):
    """Raised inside a decision to end it with an outcome other than APPLIED."""

    def __init__(self, outcome: InboxOutcome, error: str) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error


def _unmatched(what: str) -> _Verdict:
    return _Verdict(InboxOutcome.UNMATCHED, f"no {what} matches this event yet")


def _rejected(why: str) -> _Verdict:
    return _Verdict(InboxOutcome.REJECTED, why)


@dataclass(frozen=True, slots=True)
class ApplyPaymentEvent:
    units: UnitRunner
    max_attempts: int = DEFAULT_EVENT_MAX_ATTEMPTS  # tries of an unmatched event before parking

    def __call__(self, event: PaymentEvent, *, replay: bool = False) -> EventApplied:
        """Apply `event` once. `replay` re-applies a stored event whatever its outcome was."""
        return self.units.run(lambda unit: self._apply(unit, event, replay))

    def apply_all(self, events: Sequence[PaymentEvent]) -> list[EventApplied | Exception]:
        """Apply events that arrived together in one unit of work (one transaction, one commit),
        each exactly as `__call__` would; the results in the order given.

        The rows they concern are read and locked first, together and in one order (sessions
        by id, then their accounts by user): two such units running at once take their locks
        the same way round, and each event then finds its rows already read. If the unit fails
        for any reason but a lost race (which re-runs it), each event is applied alone instead:
        one event's problem is never another's.
        """
        order = sorted(range(len(events)),
                       key=lambda i: (events[i].stripe_session_id, events[i].payment_id))

        def together(unit: UnitOfWork) -> list[EventApplied]:
            _lock_in_order(unit, events)
            applied = {i: self._apply(unit, events[i], False) for i in order}
            return [applied[i] for i in range(len(events))]

        try:
            return list(self.units.run(together))
        except Exception:
            if len(events) == 1:
                raise
        results: list[EventApplied | Exception] = []
        for event in events:
            try:
                results.append(self(event))
            except Exception as error:  # its own answer: 503 when transient, else 500
                results.append(error)
        return results

    def _apply(self, unit: UnitOfWork, event: PaymentEvent, replay: bool) -> EventApplied:
        stored = unit.inbox.get(event.event_id)
        if stored is not None and stored.outcome not in RETRIED_OUTCOMES and not replay:
            return EventApplied(stored.outcome, duplicate=True, error=stored.error)
        now = self.units.now()
        try:
            outcome, error = self._decide(unit, event), ""
        except _Verdict as verdict:
            outcome, error = verdict.outcome, verdict.error
        if outcome is InboxOutcome.REJECTED:
            unit.events.append(PaymentEventRejected(event.event_id, event.type, error))
        attempts = stored.attempts + 1 if stored else 1
        next_attempt_at = None
        if outcome is InboxOutcome.UNMATCHED:
            if attempts >= self.max_attempts:
                outcome, error = InboxOutcome.PARKED, f"{error}; parked after {attempts} attempts"
            else:
                next_attempt_at = now + unmatched_retry_delay(attempts)
        row = stored or InboxEvent(
            event_id=event.event_id,
            type=event.type,
            payload=event.payload,
            received_at=now,
            outcome=outcome,
        )
        row.attempts, row.outcome, row.error = attempts, outcome, error
        row.processed_at, row.next_attempt_at = now, next_attempt_at
        if stored is None:
            unit.inbox.add(row)
        else:
            unit.inbox.save(row)
        return EventApplied(outcome, error=error)

    def _decide(self, unit: UnitOfWork, event: PaymentEvent) -> InboxOutcome:
        kind = event.kind
        if kind is None:
            return InboxOutcome.IGNORED
        if event.malformed:
            raise _rejected(event.malformed)
        if kind in CHECKOUT_KINDS:
            self._checkout(unit, event, kind)
        elif kind in REFUND_KINDS:
            self._refund(unit, event, kind)
        elif kind in (EventKind.DISPUTE_CREATED, EventKind.DISPUTE_CLOSED):
            self._dispute(unit, event, kind)
        else:  # payment_intent.* and charge.refunded: recorded and cross-checked only
            session = self._session_of(unit, event)
            self._check_amount(session, event)
            if event.payment_intent_id and not session.payment_intent_id:
                # Lets a dispute or dashboard refund that names only the intent find us.
                session.payment_intent_id = event.payment_intent_id
                unit.payments.save(session)
            if event.amount_refunded is not None and event.amount_refunded > (
                session.amount.amount_minor
            ):
                raise _rejected("amount_refunded exceeds the session's amount")
        return InboxOutcome.APPLIED

    def _session_of(self, unit: UnitOfWork, event: PaymentEvent) -> PaymentSession:
        session = None
        if event.stripe_session_id:
            session = unit.payments.by_stripe_session(event.stripe_session_id)
        if session is None and event.payment_id:
            session = unit.payments.by_payment_id(event.payment_id)
            if session and event.stripe_session_id and session.stripe_session_id:
                # Our payment id on a Checkout Session that is not the one we created.
                raise _rejected("the event's Checkout Session is not this payment's")
        if session is None and event.payment_intent_id:
            session = unit.payments.by_payment_intent(event.payment_intent_id)
        if session is None:
            raise _unmatched("session")
        return session

    @staticmethod
    def _check_amount(session: PaymentSession, event: PaymentEvent) -> None:
        if event.amount is not None and not session.amount.same_as(
            event.amount.currency, event.amount.amount_minor
        ):
            raise _rejected(
                f"event amount {event.amount.format()} does not match the session's "
                f"{session.amount.format()}"
            )

    def _checkout(self, unit: UnitOfWork, event: PaymentEvent, kind: EventKind) -> None:
        session = self._session_of(unit, event)
        self._check_amount(session, event)
        now = self.units.now()
        if not session.stripe_session_id and event.stripe_session_id:
            session.attach_checkout(event.stripe_session_id, "", now)
        before = session.status
        if _says_paid(event):
            _postings.settle_paid(
                unit, session, event.payment_intent_id, now, request_id=event.event_id
            )
            return
        if kind is EventKind.CHECKOUT_ASYNC_FAILED:
            session.fail(now)
        elif kind is EventKind.CHECKOUT_EXPIRED:
            session.expire(now)
        elif event.payment_intent_id and not session.payment_intent_id:
            session.payment_intent_id = event.payment_intent_id  # unpaid completion: delayed
        _postings.save_session(unit, session, before)

    def _refund(self, unit: UnitOfWork, event: PaymentEvent, kind: EventKind) -> None:
        refund = None
        if event.refund_key:
            refund = unit.refunds.by_key(event.refund_key)
        if refund is None and event.refund_id:
            refund = unit.refunds.by_stripe_id(event.refund_id)
        status = "failed" if kind is EventKind.REFUND_FAILED else event.refund_status
        if refund is None:
            if event.refund_key:
                raise _unmatched("refund")
            if status in ("failed", "canceled"):
                # A refund made elsewhere that never happened: nothing to undo, but remember
                # it, so its refund.created, arriving late, finds it failed and debits nothing.
                self._remember_failed_external_refund(unit, event)
                return
            refund = self._external_refund(unit, event)
            if refund is None:
                return
        session = unit.payments.by_payment_id(refund.payment_id)
        assert session is not None
        if event.amount is not None and event.amount.currency != session.amount.currency:
            raise _rejected("refund currency does not match the session's")
        apply_refund_snapshot(unit, refund, event.refund_id, status, self.units)

    def _remember_failed_external_refund(self, unit: UnitOfWork, event: PaymentEvent) -> None:
        if not event.refund_id or event.amount is None:
            raise _rejected("refund event without id or amount")
        session = self._session_of(unit, event)
        unit.refunds.add(
            _external_refund_row(
                session, event, coins=0, now=self.units.now(), status=RefundStatus.FAILED
            )
        )

    def _external_refund(self, unit: UnitOfWork, event: PaymentEvent) -> Refund | None:
        """A refund made outside this service (the dashboard): debit in proportion, by `re_`."""
        if not event.refund_id or event.amount is None:
            raise _rejected("refund event without id or amount")
        session = self._session_of(unit, event)
        if not session.is_credited:
            raise _unmatched("credited session")
        if event.amount.currency != session.amount.currency:
            raise _rejected("refund currency does not match the session's")
        refunded = sum(
            r.amount.amount_minor
            for r in unit.refunds.for_payment(session.payment_id)
            if r.status is not RefundStatus.FAILED
        )
        if refunded + event.amount.amount_minor > session.amount.amount_minor:
            raise _rejected("refunds would exceed the session's amount")
        fully = refunded + event.amount.amount_minor == session.amount.amount_minor
        owed = session.total_coins - session.coins_refunded
        coins = (
            owed
            if fully
            else min(
                owed, session.total_coins * event.amount.amount_minor // session.amount.amount_minor
            )
        )
        now = self.units.now()
        refund = _external_refund_row(session, event, coins=coins, now=now)
        if coins > 0:
            entry = _postings.debit_what_is_left(
                unit,
                session.user_id,
                _postings.session_posting(
                    session,
                    key=ledger_key("refund", event.refund_id),
                    type=TransactionType.REFUND,
                    coins=coins,
                    description="Refund made outside the billing service",
                    request_id=event.event_id,
                ),
                now,
            )
            refund.shortfall = entry.shortfall
        before = session.status
        session.record_refund_debit(coins, fully_refunded=fully, now=now)
        _postings.save_session(unit, session, before)
        unit.refunds.add(refund)
        return refund

    def _dispute(self, unit: UnitOfWork, event: PaymentEvent, kind: EventKind) -> None:
        if not event.dispute_id:
            raise _rejected("dispute event without a dispute id")
        session = self._session_of(unit, event)
        if not session.is_credited:
            raise _unmatched("credited session")
        now = self.units.now()
        before = session.status
        debit_key = ledger_key("dispute", event.dispute_id)
        debited = unit.ledger.get(debit_key)
        if kind is EventKind.DISPUTE_CREATED:
            if any(
                r.status is RefundStatus.PENDING
                for r in unit.refunds.for_payment(session.payment_id)
            ):
                # What the dispute takes depends on whether that refund succeeds or fails.
                raise _unmatched("settled refund")
            owed = session.total_coins - session.coins_refunded
            if debited is None and owed > 0 and session.status in PAID_STATES:
                _postings.debit_what_is_left(
                    unit,
                    session.user_id,
                    _postings.session_posting(
                        session,
                        key=debit_key,
                        type=TransactionType.DISPUTE,
                        coins=owed,
                        description=f"Dispute {event.dispute_id} opened",
                        request_id=event.event_id,
                    ),
                    now,
                )
            session.dispute(now)
        elif event.dispute_status == "won":
            if debited is None:
                raise _unmatched("dispute debit")
            reversal_key = ledger_key("dispute_reversal", event.dispute_id)
            if unit.ledger.get(reversal_key) is None and debited.coins < 0:
                _postings.credit(
                    unit,
                    session.user_id,
                    _postings.session_posting(
                        session,
                        key=reversal_key,
                        type=TransactionType.DISPUTE_REVERSAL,
                        coins=-debited.coins,
                        description=f"Dispute {event.dispute_id} won",
                        request_id=event.event_id,
                    ),
                    now,
                )
            session.dispute_won(now)
        _postings.save_session(unit, session, before)


def _lock_in_order(unit: UnitOfWork, events: Sequence[PaymentEvent]) -> None:
    """Read the inbox rows and the sessions of `events`, and lock the sessions' accounts: each
    kind together, sessions before accounts, in id order (as every other writer that takes both
    does: a session, then its user's account)."""
    unit.inbox.get_many([event.event_id for event in events])
    sessions = unit.payments.lock_sessions(
        sorted({event.stripe_session_id for event in events if event.stripe_session_id}))
    paying = {event.stripe_session_id for event in events if _says_paid(event)}
    users = sorted({session.user_id for session in sessions
                    if session.stripe_session_id in paying and not session.is_credited})
    if users:
        unit.accounts.lock_many(users)


def _says_paid(event: PaymentEvent) -> bool:
    """Money was taken: a paid completion, or a delayed payment that succeeded."""
    return event.kind is EventKind.CHECKOUT_ASYNC_SUCCEEDED or (
        event.kind is EventKind.CHECKOUT_COMPLETED
        and event.payment_status in ("paid", "no_payment_required")
    )


def _external_refund_row(
    session: PaymentSession,
    event: PaymentEvent,
    *,
    coins: int,
    now: datetime,
    status: RefundStatus = RefundStatus.PENDING,
) -> Refund:
    """Our record of a refund made outside this service, keyed by Stripe's `re_` id."""
    assert event.amount is not None
    failed = status is RefundStatus.FAILED
    return Refund(
        refund_key=event.refund_id,
        payment_id=session.payment_id,
        payment_intent_id=session.payment_intent_id,
        user_id=session.user_id,
        amount=event.amount,
        coins=coins,
        created_at=now,
        updated_at=now,
        reason="refunded outside the billing service" + (", and failed" if failed else ""),
        stripe_refund_id=event.refund_id,
        status=status,
    )
