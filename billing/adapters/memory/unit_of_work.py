"""An in-memory store with the semantics the SQL store has.

A writing unit holds the store's lock from start to end (like SQLite's BEGIN IMMEDIATE), works on
a copy and replaces the store's state only on commit: an uncommitted unit leaves nothing behind.
Unique keys raise TransientConflict as a database's unique index would. The commit gives the
unit's new ledger rows their feed positions, still under the lock: positions follow commit order,
and a unit that never commits uses none.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Self

from billing.domain.errors import TransientConflict
from billing.domain.events import DomainEvent
from billing.domain.ledger import Account, LedgerEntry
from billing.domain.payment import PaymentSession, PaymentStatus, Refund, RefundStatus
from billing.domain.payment_events import FAILED_OUTCOMES, InboxEvent, InboxOutcome
from billing.ports import IdempotencyRecord


@dataclass
class _State:
    accounts: dict[str, Account] = field(default_factory=dict)
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)  # by key, in insertion order
    next_seq: int = 1
    unnumbered: list[str] = field(default_factory=list)  # keys of rows added, not committed
    next_position: int = 1
    payments: dict[str, PaymentSession] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    inbox: dict[str, InboxEvent] = field(default_factory=dict)
    idempotency: dict[tuple[str, str, str], IdempotencyRecord] = field(default_factory=dict)


class InMemoryStore:
    """The "database": shared by every unit made from it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.state = _State()

    def unit_of_work(
        self, *, read_only: bool = False, snapshot: bool = False
    ) -> InMemoryUnitOfWork:
        """Every unit works on a copy taken under the lock: reads are always one snapshot."""
        return InMemoryUnitOfWork(self, read_only=read_only or snapshot)

    __call__ = unit_of_work


class InMemoryUnitOfWork:
    """Implements UnitOfWork over an InMemoryStore."""

    def __init__(self, store: InMemoryStore, *, read_only: bool = False) -> None:
        self._store = store
        self._read_only = read_only
        self.events: list[DomainEvent] = []

    def __enter__(self) -> Self:
        self._store.lock.acquire()
        self._state = copy.deepcopy(self._store.state)
        if self._read_only:
            self._store.lock.release()
        self.accounts = _Accounts(self._state)
        self.ledger = _Ledger(self._state)
        self.payments = _Payments(self._state)
        self.refunds = _Refunds(self._state)
        self.inbox = _Inbox(self._state)
        self.idempotency = _Idempotency(self._state)
        self._committed = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._read_only:
            self._store.lock.release()
        if not self._committed:
            self.events.clear()

    def commit(self) -> None:
        assert not self._read_only, "a read-only unit cannot commit"
        self._number_new_rows()
        self._store.state = self._state
        self._state = copy.deepcopy(self._state)  # later writes in this unit stay uncommitted
        self._rebind()
        self._committed = True

    def rollback(self) -> None:
        self._state = copy.deepcopy(self._store.state)
        self._rebind()

    def _number_new_rows(self) -> None:
        state = self._state
        for key in state.unnumbered:
            state.ledger[key] = replace(state.ledger[key], position=state.next_position)
            state.next_position += 1
        state.unnumbered.clear()

    def _rebind(self) -> None:
        for repository in (
            self.accounts,
            self.ledger,
            self.payments,
            self.refunds,
            self.inbox,
            self.idempotency,
        ):
            repository.state = self._state


class _Repository:
    def __init__(self, state: _State) -> None:
        self.state = state


class _Accounts(_Repository):
    def get(self, user_id: str) -> Account | None:
        account = self.state.accounts.get(user_id)
        return copy.copy(account) if account else None

    def lock(self, user_id: str) -> Account:
        return copy.copy(self.state.accounts.setdefault(user_id, Account(user_id)))

    def lock_many(self, user_ids: Sequence[str]) -> Sequence[Account]:
        return [self.lock(user_id) for user_id in user_ids]

    def save(self, account: Account) -> None:
        if account.balance < 0:
            raise ValueError("CHECK balance >= 0 violated")
        self.state.accounts[account.user_id] = copy.copy(account)

    def scan(self) -> Iterator[Account]:
        return (copy.copy(a) for a in list(self.state.accounts.values()))


class _Ledger(_Repository):
    def add(self, entry: LedgerEntry) -> LedgerEntry:
        if entry.key in self.state.ledger:
            raise TransientConflict(f"duplicate ledger key {entry.key!r}")
        written = replace(entry, seq=self.state.next_seq)
        self.state.next_seq += 1
        self.state.ledger[entry.key] = written
        self.state.unnumbered.append(entry.key)
        return written

    def get(self, key: str) -> LedgerEntry | None:
        return self.state.ledger.get(key)

    def page(self, user_id: str, before_seq: int | None, limit: int) -> Sequence[LedgerEntry]:
        rows = [
            entry
            for entry in reversed(self.state.ledger.values())
            if entry.user_id == user_id and (before_seq is None or entry.seq < before_seq)
        ]
        return rows[:limit]

    def scan(self) -> Iterator[LedgerEntry]:
        return iter(sorted(self.state.ledger.values(), key=lambda e: (e.user_id, e.seq)))

    def feed(
        self, after: int, user_id: str | None, limit: int, upto: int | None = None
    ) -> Sequence[LedgerEntry]:
        rows = [
            entry
            for entry in self.state.ledger.values()
            if entry.position > max(after, 0)  # 0: not in the feed yet
            and (upto is None or entry.position <= upto)
            and (user_id is None or entry.user_id == user_id)
        ]
        return sorted(rows, key=lambda e: e.position)[:limit]

    def feed_end(self) -> int:
        return self.state.next_position - 1


class _Payments(_Repository):
    def add(self, session: PaymentSession) -> None:
        for other in self.state.payments.values():
            if (other.user_id, other.request_id) == (session.user_id, session.request_id):
                raise TransientConflict("duplicate (user_id, request_id)")
        if session.payment_id in self.state.payments:
            raise TransientConflict("duplicate payment_id")
        self.state.payments[session.payment_id] = copy.copy(session)

    def save(self, session: PaymentSession) -> None:
        if session.stripe_session_id:
            for other in self.state.payments.values():
                if (
                    other.stripe_session_id == session.stripe_session_id
                    and other.payment_id != session.payment_id
                ):
                    raise TransientConflict("duplicate stripe_session_id")
        self.state.payments[session.payment_id] = copy.copy(session)

    def _find(self, match: object, attribute: str) -> PaymentSession | None:
        for session in self.state.payments.values():
            if getattr(session, attribute) == match:
                return copy.copy(session)
        return None

    def by_payment_id(self, payment_id: str) -> PaymentSession | None:
        session = self.state.payments.get(payment_id)
        return copy.copy(session) if session else None

    def by_request(self, user_id: str, request_id: str) -> PaymentSession | None:
        for session in self.state.payments.values():
            if (session.user_id, session.request_id) == (user_id, request_id):
                return copy.copy(session)
        return None

    def by_stripe_session(self, stripe_session_id: str) -> PaymentSession | None:
        return self._find(stripe_session_id, "stripe_session_id") if stripe_session_id else None

    def lock_sessions(self, stripe_session_ids: Sequence[str]) -> Sequence[PaymentSession]:
        found = (self.by_stripe_session(session_id) for session_id in stripe_session_ids)
        return [session for session in found if session is not None]

    def by_payment_intent(self, payment_intent_id: str) -> PaymentSession | None:
        return self._find(payment_intent_id, "payment_intent_id") if payment_intent_id else None

    def pending_before(self, cutoff: datetime, limit: int) -> Sequence[PaymentSession]:
        rows = sorted(
            (
                s
                for s in self.state.payments.values()
                if s.status is PaymentStatus.PENDING and s.created_at < cutoff
            ),
            key=lambda s: s.created_at,
        )
        return [copy.copy(s) for s in rows[:limit]]

    def claim(self, payment_id: str) -> PaymentSession | None:
        session = self.by_payment_id(payment_id)  # the unit already holds the store's lock
        return session if session and session.status is PaymentStatus.PENDING else None

    def scan(self) -> Iterator[PaymentSession]:
        return (copy.copy(s) for s in list(self.state.payments.values()))


class _Refunds(_Repository):
    def add(self, refund: Refund) -> None:
        if refund.refund_key in self.state.refunds:
            raise TransientConflict(f"duplicate refund key {refund.refund_key!r}")
        self.save(refund)

    def save(self, refund: Refund) -> None:
        if refund.stripe_refund_id:
            for other in self.state.refunds.values():
                if (
                    other.stripe_refund_id == refund.stripe_refund_id
                    and other.refund_key != refund.refund_key
                ):
                    raise TransientConflict("duplicate stripe_refund_id")
        self.state.refunds[refund.refund_key] = copy.copy(refund)

    def by_key(self, refund_key: str) -> Refund | None:
        refund = self.state.refunds.get(refund_key)
        return copy.copy(refund) if refund else None

    def by_stripe_id(self, stripe_refund_id: str) -> Refund | None:
        for refund in self.state.refunds.values():
            if stripe_refund_id and refund.stripe_refund_id == stripe_refund_id:
                return copy.copy(refund)
        return None

    def for_payment(self, payment_id: str) -> Sequence[Refund]:
        return [copy.copy(r) for r in self.state.refunds.values() if r.payment_id == payment_id]

    def pending(self, limit: int) -> Sequence[Refund]:
        rows = [r for r in self.state.refunds.values() if r.status is RefundStatus.PENDING]
        return [copy.copy(r) for r in sorted(rows, key=lambda r: r.created_at)[:limit]]

    def claim(self, refund_key: str) -> Refund | None:
        refund = self.by_key(refund_key)
        return refund if refund and refund.status is RefundStatus.PENDING else None


class _Inbox(_Repository):
    def get(self, event_id: str) -> InboxEvent | None:
        event = self.state.inbox.get(event_id)
        return copy.copy(event) if event else None

    def get_many(self, event_ids: Sequence[str]) -> Mapping[str, InboxEvent]:
        found = ((event_id, self.get(event_id)) for event_id in event_ids)
        return {event_id: event for event_id, event in found if event is not None}

    def add(self, event: InboxEvent) -> None:
        if event.event_id in self.state.inbox:
            raise TransientConflict(f"duplicate event {event.event_id!r}")
        self.state.inbox[event.event_id] = copy.copy(event)

    def save(self, event: InboxEvent) -> None:
        self.state.inbox[event.event_id] = copy.copy(event)

    def recent(self, failed_only: bool, limit: int) -> Sequence[InboxEvent]:
        rows = [
            e
            for e in reversed(self.state.inbox.values())
            if not failed_only or e.outcome in FAILED_OUTCOMES
        ]
        return [copy.copy(e) for e in rows[:limit]]

    def due(self, now: datetime, limit: int) -> Sequence[InboxEvent]:
        rows = [
            e
            for e in self.state.inbox.values()
            if e.outcome is InboxOutcome.UNMATCHED
            and (e.next_attempt_at is None or e.next_attempt_at <= now)
        ]
        return [copy.copy(e) for e in sorted(rows, key=lambda e: e.received_at)[:limit]]


class _Idempotency(_Repository):
    def get(self, rpc: str, user_id: str, key: str) -> IdempotencyRecord | None:
        return self.state.idempotency.get((rpc, user_id, key))

    def add(self, record: IdempotencyRecord) -> None:
        scope = (record.rpc, record.user_id, record.key)
        if scope in self.state.idempotency:
            raise TransientConflict("duplicate idempotency key")
        self.state.idempotency[scope] = record
