"""The UnitOfWork contract (billing/ports/unit_of_work.py), one suite for every store.

The same assertions run against the in-memory store, SQLite and Postgres: whatever the use cases
can observe of a store, they observe identically on all three.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import pytest

from billing.adapters.memory import InMemoryStore
from billing.adapters.sql import SqlStore
from billing.adapters.sql.sequencer import FeedSequencer
from billing.domain.errors import InsufficientCoins, TransientConflict
from billing.domain.events import CoinsCredited
from billing.domain.ledger import Account, LedgerEntry, TransactionType
from billing.domain.money import Money
from billing.domain.payment import PaymentSession, PaymentStatus, Refund, RefundStatus
from billing.domain.payment_events import InboxEvent, InboxOutcome
from billing.ports import IdempotencyRecord, UnitOfWork, UnitOfWorkFactory

T = TypeVar("T")
T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[UnitOfWorkFactory]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        # Emptied: listings (pending, recent) must see only this test's rows.
        url = request.getfixturevalue("clean_postgres_url")
    sql_store = SqlStore(url, pool_size=2)
    yield sql_store
    sql_store.dispose()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def a_payment(**changes: object) -> PaymentSession:
    """A session with every field set to something other than its default."""
    payment = PaymentSession(
        payment_id=new_id("pay"),
        user_id=new_id("user"),
        request_id=new_id("req"),
        package_id="coins_500",
        coins=500,
        bonus=50,
        amount=Money("USD", 499),
        success_url="https://shop.example/ok?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="https://shop.example/cancel",
        expires_at=T0 + timedelta(hours=1),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=3),
        status=PaymentStatus.COMPLETED,
        stripe_session_id=new_id("cs_test"),
        checkout_url="https://checkout.stripe.com/c/pay/cs_test#fragment",
        payment_intent_id=new_id("pi"),
        coins_credited=550,
        coins_refunded=7,
    )
    return replace(payment, **changes)  # type: ignore[arg-type]


def a_refund(payment: PaymentSession, **changes: object) -> Refund:
    refund = Refund(
        refund_key=new_id("rfk"),
        payment_id=payment.payment_id,
        user_id=payment.user_id,
        amount=Money("JPY", 1200),
        coins=550,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=1),
        payment_intent_id=payment.payment_intent_id,
        reason="requested by customer",
        request_id=new_id("req"),
        stripe_refund_id=new_id("re"),
        status=RefundStatus.SUCCEEDED,
        shortfall=3,
    )
    return replace(refund, **changes)  # type: ignore[arg-type]


def an_entry(user_id: str, **changes: object) -> LedgerEntry:
    entry = LedgerEntry(
        key=new_id("purchase"),
        user_id=user_id,
        type=TransactionType.REFUND,
        coins=-40,
        balance_after=60,
        created_at=T0,
        description="Refund: changed my mind",
        session_id=new_id("cs_test"),
        payment_id=new_id("pay"),
        shortfall=2,
        caller="support",
        request_id=new_id("req"),
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


def an_event(**changes: object) -> InboxEvent:
    event = InboxEvent(
        event_id=new_id("evt"),
        type="checkout.session.completed",
        payload='{"id": "evt", "object": "event"}',
        received_at=T0,
        outcome=InboxOutcome.UNMATCHED,
        processed_at=T0 + timedelta(milliseconds=5),
        attempts=3,
        error="no session matches this event yet",
        next_attempt_at=T0 + timedelta(minutes=10),
    )
    return replace(event, **changes)  # type: ignore[arg-type]


def write(store: UnitOfWorkFactory, work: Callable[[UnitOfWork], object]) -> None:
    with store() as unit:
        work(unit)
        unit.commit()


def read(
    store: UnitOfWorkFactory, query: Callable[[UnitOfWork], T], *, snapshot: bool = False
) -> T:
    with store(read_only=True, snapshot=snapshot) as unit:
        return query(unit)


def add_account_with_entries(unit: UnitOfWork, user_id: str, count: int) -> list[LedgerEntry]:
    unit.accounts.lock(user_id)
    return [unit.ledger.add(an_entry(user_id)) for _ in range(count)]


# -- transactions ---------------------------------------------------------------------------


def test_rolls_back_uncommitted_work_by_default(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    with store() as unit:
        unit.payments.add(payment)
        unit.accounts.lock(payment.user_id)

    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) is None
    assert read(store, lambda u: u.accounts.get(payment.user_id)) is None


def test_commit_persists_work(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    write(store, lambda unit: unit.payments.add(payment))

    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) == payment


def test_rollback_discards_work_and_the_unit_goes_on(store: UnitOfWorkFactory) -> None:
    discarded, kept = a_payment(), a_payment()
    with store() as unit:
        unit.payments.add(discarded)
        unit.rollback()
        assert unit.payments.by_payment_id(discarded.payment_id) is None
        unit.payments.add(kept)
        unit.commit()

    assert read(store, lambda u: u.payments.by_payment_id(discarded.payment_id)) is None
    assert read(store, lambda u: u.payments.by_payment_id(kept.payment_id)) == kept


def test_work_after_a_commit_needs_its_own_commit(store: UnitOfWorkFactory) -> None:
    committed, uncommitted = a_payment(), a_payment()
    with store() as unit:
        unit.payments.add(committed)
        unit.commit()
        unit.payments.add(uncommitted)

    assert read(store, lambda u: u.payments.by_payment_id(committed.payment_id)) == committed
    assert read(store, lambda u: u.payments.by_payment_id(uncommitted.payment_id)) is None


def test_a_domain_error_propagates_unchanged_and_rolls_back(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    refusal = InsufficientCoins("not enough coins")
    with pytest.raises(InsufficientCoins) as raised, store() as unit:
        unit.payments.add(payment)
        unit.events.append(CoinsCredited(an_entry(payment.user_id)))
        raise refusal

    assert raised.value is refusal
    assert unit.events == []
    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) is None


def test_events_survive_only_a_committed_unit(store: UnitOfWorkFactory) -> None:
    event = CoinsCredited(an_entry("someone"))
    with store() as abandoned:
        abandoned.events.append(event)
    with store() as committed:
        committed.events.append(event)
        committed.commit()

    assert abandoned.events == []
    assert committed.events == [event]


def test_read_only_units_see_committed_data_only(store: UnitOfWorkFactory) -> None:
    committed, pending = a_payment(), a_payment()
    write(store, lambda unit: unit.payments.add(committed))

    with store() as writer:
        writer.payments.add(pending)
        with store(read_only=True) as reader:
            assert reader.payments.by_payment_id(committed.payment_id) == committed
            assert reader.payments.by_payment_id(pending.payment_id) is None
        writer.commit()

    assert read(store, lambda u: u.payments.by_payment_id(pending.payment_id)) == pending


def test_a_snapshot_unit_reads_one_moment(store: UnitOfWorkFactory) -> None:
    user_id = new_id("user")
    write(store, lambda unit: unit.accounts.save(Account(user_id, 1)))

    with store(snapshot=True) as reader:
        assert reader.accounts.get(user_id) == Account(user_id, 1)
        write(store, lambda unit: unit.accounts.save(Account(user_id, 2)))
        assert reader.accounts.get(user_id) == Account(user_id, 1)

    assert read(store, lambda u: u.accounts.get(user_id)) == Account(user_id, 2)


def test_a_unit_is_usable_again_after_a_conflict_and_a_rollback(
    store: UnitOfWorkFactory,
) -> None:
    first, after = a_payment(), a_payment()
    write(store, lambda unit: unit.payments.add(first))
    with store() as unit:
        with pytest.raises(TransientConflict):  # at once, or when the write reaches the database
            unit.payments.add(replace(first, payment_id=new_id("pay"), stripe_session_id=""))
            unit.commit()
        unit.rollback()
        unit.payments.add(after)
        unit.commit()

    assert read(store, lambda u: u.payments.by_payment_id(after.payment_id)) == after


def test_a_unit_reads_its_own_writes_through_every_key(store: UnitOfWorkFactory) -> None:
    payment, event = a_payment(), an_event()
    refund = a_refund(payment)
    record = IdempotencyRecord("SpendCoins", payment.user_id, "k", "00" * 32, {"n": 1}, T0)
    with store() as unit:
        unit.payments.add(payment)
        unit.refunds.add(refund)
        unit.inbox.add(event)
        unit.idempotency.add(record)
        unit.accounts.lock(payment.user_id)
        entry = unit.ledger.add(an_entry(payment.user_id))
        unit.accounts.save(Account(payment.user_id, 60))

        assert unit.payments.by_payment_id(payment.payment_id) == payment
        assert unit.payments.by_request(payment.user_id, payment.request_id) == payment
        assert unit.payments.by_stripe_session(payment.stripe_session_id) == payment
        assert unit.payments.by_payment_intent(payment.payment_intent_id) == payment
        assert unit.refunds.by_key(refund.refund_key) == refund
        assert unit.refunds.by_stripe_id(refund.stripe_refund_id) == refund
        assert list(unit.refunds.for_payment(payment.payment_id)) == [refund]
        assert unit.inbox.get(event.event_id) == event
        assert unit.idempotency.get("SpendCoins", payment.user_id, "k") == record
        assert unit.ledger.get(entry.key) == entry
        assert unit.accounts.get(payment.user_id) == Account(payment.user_id, 60)
        assert unit.accounts.lock(payment.user_id) == Account(payment.user_id, 60)

        moved = replace(payment, stripe_session_id=new_id("cs_test"),
                        payment_intent_id=new_id("pi"), status=PaymentStatus.DISPUTED)
        unit.payments.save(moved)
        assert unit.payments.by_stripe_session(moved.stripe_session_id) == moved
        assert unit.payments.by_payment_intent(moved.payment_intent_id) == moved
        assert unit.payments.by_stripe_session(payment.stripe_session_id) is None
        assert unit.payments.by_payment_intent(payment.payment_intent_id) is None
        unit.commit()

    assert read(store, lambda u: u.payments.by_stripe_session(moved.stripe_session_id)) == moved


def test_a_change_counts_only_once_it_is_saved(store: UnitOfWorkFactory) -> None:
    payment, event = a_payment(status=PaymentStatus.PENDING), an_event()
    write(store, lambda unit: (unit.payments.add(payment), unit.inbox.add(event),
                               unit.accounts.save(Account(payment.user_id, 5))))

    with store() as unit:
        session = unit.payments.by_payment_id(payment.payment_id)
        row = unit.inbox.get(event.event_id)
        account = unit.accounts.lock(payment.user_id)
        assert session is not None and row is not None
        session.status, row.attempts, account.balance = PaymentStatus.EXPIRED, 9, 7

        assert unit.payments.by_stripe_session(payment.stripe_session_id) == payment
        assert unit.inbox.get(event.event_id) == event
        assert unit.accounts.get(payment.user_id) == Account(payment.user_id, 5)
        unit.commit()

    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) == payment
    assert read(store, lambda u: u.accounts.get(payment.user_id)) == Account(payment.user_id, 5)


# -- round trips ----------------------------------------------------------------------------


def test_accounts_are_created_at_zero_by_lock_and_saved(store: UnitOfWorkFactory) -> None:
    user_id = new_id("user")
    assert read(store, lambda u: u.accounts.get(user_id)) is None

    with store() as unit:
        assert unit.accounts.get(user_id) is None
        account = unit.accounts.lock(user_id)
        assert account == Account(user_id, 0)
        account.balance = 1_234_567_890_123
        unit.accounts.save(account)
        unit.commit()

    assert read(store, lambda u: u.accounts.get(user_id)) == Account(user_id, 1_234_567_890_123)
    with store() as unit:
        assert unit.accounts.lock(user_id) == Account(user_id, 1_234_567_890_123)


def test_ledger_rows_round_trip_with_a_store_assigned_seq(store: UnitOfWorkFactory) -> None:
    user_id = new_id("user")
    entry = an_entry(user_id)
    with store() as unit:
        unit.accounts.lock(user_id)
        written = unit.ledger.add(entry)
        unit.commit()

    assert written.seq > 0
    assert written == replace(entry, seq=written.seq)
    stored = read(store, lambda u: u.ledger.get(entry.key))
    assert stored == written
    assert stored is not None and stored.created_at.utcoffset() == timedelta(0)
    assert read(store, lambda u: u.ledger.get("no-such-key")) is None


def test_ledger_pages_are_newest_first_by_keyset(store: UnitOfWorkFactory) -> None:
    user_id, other_id = new_id("user"), new_id("user")
    with store() as unit:
        mine = add_account_with_entries(unit, user_id, 3)
        add_account_with_entries(unit, other_id, 2)
        mine += [unit.ledger.add(an_entry(user_id)) for _ in range(2)]
        unit.commit()
    newest_first = list(reversed(mine))

    first = read(store, lambda u: list(u.ledger.page(user_id, None, 2)))
    second = read(store, lambda u: list(u.ledger.page(user_id, first[-1].seq, 2)))
    last = read(store, lambda u: list(u.ledger.page(user_id, second[-1].seq, 2)))

    assert first + second + last == newest_first
    assert [len(first), len(second), len(last)] == [2, 2, 1]
    assert read(store, lambda u: list(u.ledger.page(user_id, mine[0].seq, 2))) == []
    assert read(store, lambda u: list(u.ledger.page(new_id("user"), None, 2))) == []


def test_payment_sessions_round_trip_through_every_finder(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    write(store, lambda unit: unit.payments.add(payment))

    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) == payment
    assert read(store, lambda u: u.payments.by_request(payment.user_id,
                                                       payment.request_id)) == payment
    assert read(store, lambda u: u.payments.by_stripe_session(
        payment.stripe_session_id)) == payment
    assert read(store, lambda u: u.payments.by_payment_intent(
        payment.payment_intent_id)) == payment
    assert read(store, lambda u: u.payments.by_request(payment.user_id, "other")) is None
    assert read(store, lambda u: u.payments.by_payment_id("pay_none")) is None


def test_a_new_session_without_stripe_ids_round_trips_and_is_saved(
    store: UnitOfWorkFactory,
) -> None:
    payment = a_payment(status=PaymentStatus.PENDING, stripe_session_id="", checkout_url="",
                        payment_intent_id="", coins_credited=0, coins_refunded=0)
    another = a_payment(stripe_session_id="", payment_intent_id="")
    write(store, lambda unit: (unit.payments.add(payment), unit.payments.add(another)))

    assert read(store, lambda u: u.payments.by_payment_id(payment.payment_id)) == payment
    assert read(store, lambda u: u.payments.by_stripe_session("")) is None
    assert read(store, lambda u: u.payments.by_payment_intent("")) is None

    changed = replace(payment, status=PaymentStatus.COMPLETED, stripe_session_id=new_id("cs"),
                      checkout_url="https://checkout.example/x", payment_intent_id=new_id("pi"),
                      coins_credited=550, updated_at=T0 + timedelta(days=1))
    write(store, lambda unit: unit.payments.save(changed))
    assert read(store, lambda u: u.payments.by_stripe_session(
        changed.stripe_session_id)) == changed


def test_timestamps_come_back_as_the_same_instant(store: UnitOfWorkFactory) -> None:
    elsewhere = timezone(timedelta(hours=-5))
    payment = a_payment(created_at=T0.astimezone(elsewhere))
    write(store, lambda unit: unit.payments.add(payment))

    stored = read(store, lambda u: u.payments.by_payment_id(payment.payment_id))
    assert stored is not None and stored.created_at == T0


def test_pending_before_lists_old_pending_sessions_oldest_first(
    store: UnitOfWorkFactory,
) -> None:
    cutoff = T0
    oldest = a_payment(status=PaymentStatus.PENDING, created_at=cutoff - timedelta(hours=3))
    older = a_payment(status=PaymentStatus.PENDING, created_at=cutoff - timedelta(hours=2))
    old = a_payment(status=PaymentStatus.PENDING, created_at=cutoff - timedelta(seconds=1))
    at_cutoff = a_payment(status=PaymentStatus.PENDING, created_at=cutoff)
    completed = a_payment(status=PaymentStatus.COMPLETED, created_at=cutoff - timedelta(days=1))
    write(store, lambda unit: [unit.payments.add(p)
                               for p in (old, at_cutoff, oldest, completed, older)])

    assert read(store, lambda u: list(u.payments.pending_before(cutoff, 10))) == [
        oldest, older, old]
    assert read(store, lambda u: list(u.payments.pending_before(cutoff, 2))) == [oldest, older]


def test_refunds_round_trip_through_every_finder(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    first = a_refund(payment, created_at=T0)
    second = a_refund(payment, created_at=T0 + timedelta(seconds=1), stripe_refund_id="",
                      status=RefundStatus.PENDING, shortfall=0, reason="", request_id="")
    write(store, lambda unit: (unit.payments.add(payment), unit.refunds.add(first),
                               unit.refunds.add(second)))

    assert read(store, lambda u: u.refunds.by_key(first.refund_key)) == first
    assert read(store, lambda u: u.refunds.by_key(second.refund_key)) == second
    assert read(store, lambda u: u.refunds.by_stripe_id(first.stripe_refund_id)) == first
    assert read(store, lambda u: u.refunds.by_stripe_id("")) is None
    assert read(store, lambda u: list(u.refunds.for_payment(payment.payment_id))) == [
        first, second]
    assert read(store, lambda u: list(u.refunds.for_payment("pay_none"))) == []

    succeeded = replace(second, status=RefundStatus.SUCCEEDED, stripe_refund_id=new_id("re"),
                        updated_at=T0 + timedelta(hours=1))
    write(store, lambda unit: unit.refunds.save(succeeded))
    assert read(store, lambda u: u.refunds.by_stripe_id(succeeded.stripe_refund_id)) == succeeded


def test_pending_refunds_are_listed_oldest_first(store: UnitOfWorkFactory) -> None:
    payment = a_payment()
    later = a_refund(payment, status=RefundStatus.PENDING, created_at=T0 + timedelta(seconds=2))
    done = a_refund(payment, status=RefundStatus.SUCCEEDED, created_at=T0)
    earlier = a_refund(payment, status=RefundStatus.PENDING, created_at=T0 + timedelta(seconds=1))
    write(store, lambda unit: (unit.payments.add(payment), unit.refunds.add(earlier),
                               unit.refunds.add(done), unit.refunds.add(later)))

    assert read(store, lambda u: list(u.refunds.pending(10))) == [earlier, later]
    assert read(store, lambda u: list(u.refunds.pending(1))) == [earlier]


def test_inbox_events_round_trip_and_are_saved(store: UnitOfWorkFactory) -> None:
    event = an_event()
    bare = an_event(processed_at=None, next_attempt_at=None, error="", payload="",
                    outcome=InboxOutcome.APPLIED, attempts=1)
    write(store, lambda unit: (unit.inbox.add(event), unit.inbox.add(bare)))

    assert read(store, lambda u: u.inbox.get(event.event_id)) == event
    assert read(store, lambda u: u.inbox.get(bare.event_id)) == bare
    assert read(store, lambda u: u.inbox.get("evt_none")) is None

    event.attempts, event.outcome, event.error = 4, InboxOutcome.APPLIED, ""
    event.processed_at = T0 + timedelta(hours=1)
    write(store, lambda unit: unit.inbox.save(event))
    assert read(store, lambda u: u.inbox.get(event.event_id)) == event


def test_recent_inbox_events_are_newest_first_optionally_failed_only(
    store: UnitOfWorkFactory,
) -> None:
    outcomes = [InboxOutcome.APPLIED, InboxOutcome.UNMATCHED, InboxOutcome.IGNORED,
                InboxOutcome.REJECTED, InboxOutcome.PARKED, InboxOutcome.APPLIED]
    events = [an_event(outcome=outcome, received_at=T0 + timedelta(seconds=index))
              for index, outcome in enumerate(outcomes)]
    write(store, lambda unit: [unit.inbox.add(event) for event in events])
    newest_first = list(reversed(events))

    assert read(store, lambda u: list(u.inbox.recent(False, 10))) == newest_first
    assert read(store, lambda u: list(u.inbox.recent(False, 2))) == newest_first[:2]
    failed = [e for e in newest_first if e.outcome in (
        InboxOutcome.UNMATCHED, InboxOutcome.REJECTED, InboxOutcome.PARKED)]
    assert read(store, lambda u: list(u.inbox.recent(True, 10))) == failed
    assert read(store, lambda u: list(u.inbox.recent(True, 1))) == failed[:1]


def test_idempotency_records_round_trip_in_their_scope(store: UnitOfWorkFactory) -> None:
    user_id = new_id("user")
    record = IdempotencyRecord(
        rpc="SpendCoins",
        user_id=user_id,
        key="key-1",
        params_hash="ab" * 32,
        response={"coins": -5, "type": "USAGE", "nested": {"list": [1, "two"]}, "none": None},
        created_at=T0,
    )
    write(store, lambda unit: unit.idempotency.add(record))

    assert read(store, lambda u: u.idempotency.get("SpendCoins", user_id, "key-1")) == record
    assert read(store, lambda u: u.idempotency.get("GrantCoins", user_id, "key-1")) is None
    assert read(store, lambda u: u.idempotency.get("SpendCoins", "someone", "key-1")) is None
    assert read(store, lambda u: u.idempotency.get("SpendCoins", user_id, "key-2")) is None


def test_unmatched_events_are_due_once_their_retry_time_has_come(
    store: UnitOfWorkFactory,
) -> None:
    now = T0 + timedelta(hours=1)
    never_tried = an_event(outcome=InboxOutcome.UNMATCHED, next_attempt_at=None,
                           received_at=T0 + timedelta(seconds=2))
    due_now = an_event(outcome=InboxOutcome.UNMATCHED, next_attempt_at=now,
                       received_at=T0 + timedelta(seconds=1))
    later = an_event(outcome=InboxOutcome.UNMATCHED, next_attempt_at=now + timedelta(seconds=1))
    applied = an_event(outcome=InboxOutcome.APPLIED, next_attempt_at=None)
    parked = an_event(outcome=InboxOutcome.PARKED, next_attempt_at=None)
    write(store, lambda unit: [unit.inbox.add(e)
                               for e in (never_tried, due_now, later, applied, parked)])

    assert read(store, lambda u: list(u.inbox.due(now, 10))) == [due_now, never_tried]
    assert read(store, lambda u: list(u.inbox.due(now, 1))) == [due_now]


def test_scans_return_every_account_ledger_row_and_session(store: UnitOfWorkFactory) -> None:
    users = sorted(new_id("user") for _ in range(3))
    payments = [a_payment(user_id=user) for user in users]
    with store() as unit:
        entries = {user: add_account_with_entries(unit, user, 2) for user in reversed(users)}
        unit.accounts.save(Account(users[0], 42))
        for payment in payments:
            unit.payments.add(payment)
        unit.commit()

    def scans(unit: UnitOfWork) -> tuple[list[Account], list[LedgerEntry], list[PaymentSession]]:
        return list(unit.accounts.scan()), list(unit.ledger.scan()), list(unit.payments.scan())

    accounts, ledger_rows, sessions = read(store, scans, snapshot=True)  # scans: the audit's
    assert sorted(accounts, key=lambda a: a.user_id) == [
        Account(users[0], 42), Account(users[1], 0), Account(users[2], 0)]
    assert ledger_rows == [entry for user in users for entry in entries[user]]  # by user, seq
    assert sorted(sessions, key=lambda s: s.payment_id) == sorted(
        payments, key=lambda s: s.payment_id)


def test_claim_returns_a_pending_session_or_refund_and_nothing_else(
    store: UnitOfWorkFactory,
) -> None:
    pending = a_payment(status=PaymentStatus.PENDING)
    paid = a_payment(status=PaymentStatus.COMPLETED)
    waiting = a_refund(paid, status=RefundStatus.PENDING)
    done = a_refund(paid, status=RefundStatus.SUCCEEDED)
    write(store, lambda unit: (unit.payments.add(pending), unit.payments.add(paid),
                               unit.refunds.add(waiting), unit.refunds.add(done)))

    with store() as unit:
        assert unit.payments.claim(pending.payment_id) == pending
        assert unit.payments.claim(paid.payment_id) is None
        assert unit.payments.claim("pay_none") is None
        assert unit.refunds.claim(waiting.refund_key) == waiting
        assert unit.refunds.claim(done.refund_key) is None
        assert unit.refunds.claim("rfk_none") is None


# -- unique keys: a lost race is a TransientConflict, never a second row ---------------------
# A store may raise it when the duplicate is registered or when its write reaches the database
# (a SQL unit of work sends its writes with its next read or its commit): no later than the
# commit, which then leaves nothing behind.


def _duplicate_ledger_key(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    entry = an_entry(user_id)
    unit.accounts.lock(user_id)
    unit.ledger.add(entry)
    return lambda: unit.ledger.add(replace(entry, coins=-1, description="again"))


def _duplicate_event_id(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    event = an_event()
    unit.inbox.add(event)
    return lambda: unit.inbox.add(replace(event, type="refund.created"))


def _duplicate_refund_key(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    payment = a_payment(user_id=user_id)
    refund = a_refund(payment)
    unit.payments.add(payment)
    unit.refunds.add(refund)
    return lambda: unit.refunds.add(replace(refund, stripe_refund_id=new_id("re")))


def _duplicate_stripe_refund_id(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    payment = a_payment(user_id=user_id)
    refund = a_refund(payment)
    unit.payments.add(payment)
    unit.refunds.add(refund)
    return lambda: unit.refunds.add(replace(refund, refund_key=new_id("rfk")))


def _duplicate_request_id(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    payment = a_payment(user_id=user_id)
    unit.payments.add(payment)
    return lambda: unit.payments.add(a_payment(user_id=user_id, request_id=payment.request_id))


def _duplicate_stripe_session(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    payment, other = a_payment(user_id=user_id), a_payment(stripe_session_id="")
    unit.payments.add(payment)
    unit.payments.add(other)
    return lambda: unit.payments.save(
        replace(other, stripe_session_id=payment.stripe_session_id))


def _duplicate_idempotency_scope(unit: UnitOfWork, user_id: str) -> Callable[[], object]:
    record = IdempotencyRecord("GrantCoins", user_id, "k", "00" * 32, {"coins": 1}, T0)
    unit.idempotency.add(record)
    return lambda: unit.idempotency.add(replace(record, params_hash="11" * 32))


@pytest.mark.parametrize("duplicate", [
    _duplicate_ledger_key, _duplicate_event_id, _duplicate_refund_key,
    _duplicate_stripe_refund_id, _duplicate_request_id, _duplicate_stripe_session,
    _duplicate_idempotency_scope,
], ids=lambda f: f.__name__.removeprefix("_duplicate_"))
def test_a_duplicate_unique_key_is_a_transient_conflict(
    store: UnitOfWorkFactory, duplicate: Callable[[UnitOfWork, str], Callable[[], object]],
) -> None:
    user_id = new_id("user")
    with store() as unit:
        add_again = duplicate(unit, user_id)
        unit.commit()
        with pytest.raises(TransientConflict):  # no later than the commit
            add_again()
            unit.commit()


# -- several rows at once (group commit) --------------------------------------------------------
def test_several_accounts_are_locked_at_once_created_at_zero_where_missing(
    store: UnitOfWorkFactory,
) -> None:
    old, new = new_id("user"), new_id("user")
    write(store, lambda unit: unit.accounts.save(replace(unit.accounts.lock(old), balance=70)))

    with store() as unit:
        locked = unit.accounts.lock_many(sorted([old, new]))
        assert sorted((a.user_id, a.balance) for a in locked) == sorted([(old, 70), (new, 0)])
        assert unit.accounts.lock(old) == Account(old, 70)  # already this unit's
        entry = unit.ledger.add(an_entry(old, coins=5, balance_after=75))
        again = unit.ledger.add(an_entry(old, coins=5, balance_after=80))
        unit.commit()

    assert 0 < entry.seq < again.seq
    assert read(store, lambda u: u.accounts.get(new)) == Account(new, 0)


def test_sessions_are_read_at_once_by_their_checkout_session_ids(
    store: UnitOfWorkFactory,
) -> None:
    first, second = a_payment(), a_payment(status=PaymentStatus.PENDING, coins_credited=0)
    write(store, lambda unit: (unit.payments.add(first), unit.payments.add(second)))

    with store() as unit:
        found = unit.payments.lock_sessions(
            sorted([first.stripe_session_id, second.stripe_session_id, "cs_test_nobody"]))
        assert sorted(s.payment_id for s in found) == sorted(
            [first.payment_id, second.payment_id])
        assert unit.payments.by_stripe_session(second.stripe_session_id) == second
        assert unit.payments.lock_sessions([]) == []


def test_inbox_rows_are_read_at_once_and_a_missing_one_stays_missing(
    store: UnitOfWorkFactory,
) -> None:
    known = an_event()
    write(store, lambda unit: unit.inbox.add(known))
    missing = new_id("evt")

    with store() as unit:
        assert unit.inbox.get_many([known.event_id, missing]) == {known.event_id: known}
        assert unit.inbox.get(missing) is None
        arrived = an_event(event_id=missing)
        unit.inbox.add(arrived)  # then it is there, in this unit and after its commit
        assert unit.inbox.get(missing) == arrived
        unit.commit()

    assert read(store, lambda u: u.inbox.get(missing)) == arrived


# -- the ledger feed --------------------------------------------------------------------------
# Every ledger row gets a position after its transaction commits: memory and SQLite give it at
# commit, under the writer lock; on Postgres the feed sequencer gives it soon after, run here by
# `sequence`. Postgres may leave gaps in the numbers (a sequencer transaction that failed); the
# order is what every store guarantees.


def sequence(store: UnitOfWorkFactory) -> None:
    """Give every committed row its position (the sequencer's work on Postgres; the others
    gave them at commit already)."""
    if isinstance(store, SqlStore) and store.engine.dialect.name == "postgresql":
        sequencer = FeedSequencer(store.engine)
        try:
            while sequencer.sequence_once().more:
                pass
        finally:
            sequencer.stop()


def feed(store: UnitOfWorkFactory, after: int, user_id: str | None = None, limit: int = 100,
         upto: int | None = None) -> list[LedgerEntry]:
    return read(store, lambda u: list(u.ledger.feed(after, user_id, limit, upto)))


def test_the_feed_lists_committed_rows_once_they_have_a_position_in_commit_order(
    store: UnitOfWorkFactory,
) -> None:
    first_user, second_user = new_id("user"), new_id("user")
    start = read(store, lambda u: u.ledger.feed_end())
    with store() as unit:
        rows = add_account_with_entries(unit, first_user, 2)
        assert unit.ledger.feed(start, None, 100) == []  # not committed: no position
        unit.commit()
    with store() as unit:
        rows += add_account_with_entries(unit, second_user, 1)
        rows.append(unit.ledger.add(an_entry(first_user)))
        unit.commit()

    sequence(store)
    listed = feed(store, start)

    assert listed == rows  # positions aside (entries compare without them)
    positions = [entry.position for entry in listed]
    assert positions[0] > start and positions == sorted(set(positions))
    assert read(store, lambda u: u.ledger.feed_end()) == positions[-1]
    assert read(store, lambda u: u.ledger.get(rows[0].key)) == rows[0]
    stored = read(store, lambda u: u.ledger.get(rows[0].key))
    assert stored is not None and stored.position == positions[0]


def test_the_feed_filters_by_user_and_bounds_and_limits_by_position(
    store: UnitOfWorkFactory,
) -> None:
    mine, other = new_id("user"), new_id("user")
    start = read(store, lambda u: u.ledger.feed_end())
    for user_id in (mine, other, mine, mine, other):
        write(store, lambda unit, user_id=user_id: add_account_with_entries(unit, user_id, 1))
    sequence(store)
    everything = feed(store, start)
    positions = [entry.position for entry in everything]
    my_rows = [entry for entry in everything if entry.user_id == mine]

    assert [entry.user_id for entry in everything] == [mine, other, mine, mine, other]
    assert feed(store, start, mine) == my_rows
    assert [e.position for e in feed(store, my_rows[0].position, mine)] == [
        e.position for e in my_rows[1:]]
    assert feed(store, start, upto=positions[2]) == everything[:3]
    assert feed(store, positions[0], upto=positions[3]) == everything[1:4]
    assert feed(store, start, mine, upto=positions[2]) == my_rows[:2]
    assert feed(store, start, limit=2) == everything[:2]
    assert feed(store, start, mine, limit=1) == my_rows[:1]
    assert feed(store, positions[-1]) == []
    assert feed(store, start, new_id("user")) == []


def test_reading_the_feed_page_by_page_sees_every_row_once(store: UnitOfWorkFactory) -> None:
    user_id = new_id("user")
    start = read(store, lambda u: u.ledger.feed_end())
    with store() as unit:
        rows = add_account_with_entries(unit, user_id, 7)
        unit.commit()
    sequence(store)

    seen: list[LedgerEntry] = []
    after = start
    while page := feed(store, after, limit=3):
        seen += page
        after = page[-1].position

    assert seen == rows
    assert after == read(store, lambda u: u.ledger.feed_end())


def test_the_feed_is_empty_and_ends_at_zero_before_any_row(store: UnitOfWorkFactory) -> None:
    assert read(store, lambda u: u.ledger.feed_end()) == 0
    assert feed(store, 0) == []


@pytest.fixture(params=["memory", "sqlite"])
def committing_store(request: pytest.FixtureRequest) -> Iterator[UnitOfWorkFactory]:
    """The stores that give positions at commit, under their writer lock."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    sql_store = SqlStore(request.getfixturevalue("sqlite_url"), pool_size=2)
    yield sql_store
    sql_store.dispose()


def test_memory_and_sqlite_give_positions_at_commit_and_none_to_a_rolled_back_unit(
    committing_store: UnitOfWorkFactory,
) -> None:
    store, user_id = committing_store, new_id("user")
    write(store, lambda unit: add_account_with_entries(unit, user_id, 1))
    with store() as abandoned:
        add_account_with_entries(abandoned, user_id, 2)
    with store() as unit:
        add_account_with_entries(unit, user_id, 1)
        unit.rollback()
        kept = add_account_with_entries(unit, user_id, 2)
        unit.commit()

    positions = [entry.position for entry in feed(store, 0)]

    assert positions == [1, 2, 3]  # no sequencer needed, and no number lost
    assert feed(store, 1) == kept
    assert read(store, lambda u: u.ledger.feed_end()) == 3
