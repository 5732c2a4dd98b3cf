"""The unit of work and its repositories: one transaction per use case.

A unit rolls back unless `commit()` is called. A unit opened for writing locks every row it
reads (row locks on Postgres, the whole database on SQLite, a lock in memory), so a use case can
read, decide and write without another writer slipping in between. Unique keys are the backstop:
a lost race surfaces as TransientConflict and the whole use case runs again. A store may send
its writes late (with its next read, or at commit), so such a conflict is raised no later than
`commit()`; within a unit, every read sees the unit's own writes.

Every ledger row gets a position in one global feed after its transaction commits (the store
gives it at commit, or a sequencer of the store's does, soon after). Once a position is visible
no row is ever given a lower one, and per user positions follow seq: a reader that resumes
`feed` after the last position it saw sees every row exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from billing.domain.events import DomainEvent
from billing.domain.ledger import Account, LedgerEntry
from billing.domain.payment import PaymentSession, Refund
from billing.domain.payment_events import InboxEvent


class AccountRepository(Protocol):
    def get(self, user_id: str) -> Account | None: ...

    def lock(self, user_id: str) -> Account:
        """The account, locked until the unit ends; a new one at balance 0 if there is none."""
        ...

    def lock_many(self, user_ids: Sequence[str]) -> Sequence[Account]:
        """`lock` for each user, in the order given (callers sort them, so that units locking
        several accounts at once take them the same way round), in as few round trips as the
        store allows."""
        ...

    def save(self, account: Account) -> None: ...

    def scan(self) -> Iterator[Account]:
        """Every account (for the audit); streamed, not loaded at once."""
        ...


class LedgerRepository(Protocol):
    def add(self, entry: LedgerEntry) -> LedgerEntry:
        """Write the row; returns it with its `seq`. A duplicate key raises TransientConflict
        (no later than the commit). Lock the user's account first: per user, seq order is
        commit order."""
        ...

    def get(self, key: str) -> LedgerEntry | None: ...

    def page(self, user_id: str, before_seq: int | None, limit: int) -> Sequence[LedgerEntry]:
        """A user's rows, newest first, with seq < before_seq when given."""
        ...

    def scan(self) -> Iterator[LedgerEntry]:
        """Every row ordered by (user_id, seq), streamed (for the audit; needs a snapshot
        unit)."""
        ...

    def feed(
        self, after: int, user_id: str | None, limit: int, upto: int | None = None
    ) -> Sequence[LedgerEntry]:
        """Rows with a feed position in (after, upto] (no upper bound when upto is None), in
        position order, at most `limit`; every user's when user_id is None. Rows not yet given a
        position are never returned."""
        ...

    def feed_end(self) -> int:
        """The highest position given so far (0 when none)."""
        ...


class PaymentRepository(Protocol):
    def add(self, session: PaymentSession) -> None: ...

    def save(self, session: PaymentSession) -> None: ...

    def by_payment_id(self, payment_id: str) -> PaymentSession | None: ...

    def by_request(self, user_id: str, request_id: str) -> PaymentSession | None: ...

    def by_stripe_session(self, stripe_session_id: str) -> PaymentSession | None: ...

    def lock_sessions(self, stripe_session_ids: Sequence[str]) -> Sequence[PaymentSession]:
        """`by_stripe_session` for each id (unknown ones are left out), read together and, in a
        writing unit, locked in the order given."""
        ...

    def by_payment_intent(self, payment_intent_id: str) -> PaymentSession | None: ...

    def pending_before(self, cutoff: datetime, limit: int) -> Sequence[PaymentSession]:
        """PENDING sessions created before `cutoff`, oldest first (for reconciliation)."""
        ...

    def claim(self, payment_id: str) -> PaymentSession | None:
        """The session if it is still PENDING and no other unit holds it (SKIP LOCKED), locked
        until this unit ends; None otherwise. Replicas reconciling at once never share work."""
        ...

    def scan(self) -> Iterator[PaymentSession]: ...


class RefundRepository(Protocol):
    def add(self, refund: Refund) -> None: ...

    def save(self, refund: Refund) -> None: ...

    def by_key(self, refund_key: str) -> Refund | None: ...

    def by_stripe_id(self, stripe_refund_id: str) -> Refund | None: ...

    def for_payment(self, payment_id: str) -> Sequence[Refund]: ...

    def pending(self, limit: int) -> Sequence[Refund]:
        """Refunds still PENDING (debited, Stripe not confirmed), oldest first."""
        ...

    def claim(self, refund_key: str) -> Refund | None:
        """Like PaymentRepository.claim, for a PENDING refund."""
        ...


class EventInbox(Protocol):
    def get(self, event_id: str) -> InboxEvent | None: ...

    def get_many(self, event_ids: Sequence[str]) -> Mapping[str, InboxEvent]:
        """`get` for each id, read together: the rows there are, by event id. A later `get` of
        any of these ids costs the store nothing."""
        ...

    def add(self, event: InboxEvent) -> None:
        """A second row for the same event id raises TransientConflict (no later than the
        commit)."""
        ...

    def save(self, event: InboxEvent) -> None: ...

    def recent(self, failed_only: bool, limit: int) -> Sequence[InboxEvent]:
        """Newest first; failed_only keeps unmatched, rejected and parked events."""
        ...

    def due(self, now: datetime, limit: int) -> Sequence[InboxEvent]:
        """UNMATCHED events whose next attempt is due (next_attempt_at null or <= now)."""
        ...


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The first successful response of an RPC for (rpc, user_id, key)."""

    rpc: str
    user_id: str
    key: str
    params_hash: str
    response: Mapping[str, object]
    created_at: datetime


class IdempotencyStore(Protocol):
    def get(self, rpc: str, user_id: str, key: str) -> IdempotencyRecord | None: ...

    def add(self, record: IdempotencyRecord) -> None: ...


@runtime_checkable
class UnitOfWork(Protocol):
    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def refunds(self) -> RefundRepository: ...

    @property
    def inbox(self) -> EventInbox: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    @property
    def events(self) -> list[DomainEvent]:
        """Collected while the unit runs, published after commit."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False, snapshot: bool = False) -> UnitOfWork:
        """A new unit. A read-only one takes no locks and must not write; each of its reads sees
        what was committed when it ran. A snapshot unit is read-only and all its reads see the
        same moment (the audit compares tables with each other)."""
        ...
