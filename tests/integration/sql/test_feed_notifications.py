"""What Postgres notifies, heard on a real LISTEN connection (issue 12): the sequencer's commit,
once per transaction, with the top position; a unit whose payment status changed without a
ledger row, with its COMMIT and no round trip of its own; a ledger write, never."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from billing.adapters.sql import SqlStore, migrate
from billing.adapters.sql.notifications import FEED_CHANNEL, STATUS_CHANNEL
from billing.adapters.sql.sequencer import FeedSequencer
from billing.domain.events import CoinsCredited, DomainEvent, PaymentStatusChanged
from billing.domain.ledger import Posting, TransactionType
from billing.domain.payment import PaymentSession, PaymentStatus

from .driver import DriverProbe
from .test_unit_of_work import NOW, a_payment, new_id

WAIT_S = 10


class Listener:
    """A LISTEN connection of the test's own, on both channels."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        args, kwargs = parsed.get_dialect()().create_connect_args(parsed)
        self._connection: Any = psycopg2.connect(*args, **kwargs)
        self._connection.autocommit = True
        with self._connection.cursor() as cursor:
            cursor.execute(f"LISTEN {FEED_CHANNEL}; LISTEN {STATUS_CHANNEL}")

    def next(self) -> tuple[str, str]:
        """The next notification (channel, payload); fails after WAIT_S without one."""
        deadline = time.monotonic() + WAIT_S
        while not self._connection.notifies:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no notification came"
            select.select([self._connection], [], [], remaining)
            self._connection.poll()
        notification = self._connection.notifies.pop(0)
        return notification.channel, notification.payload

    def close(self) -> None:
        self._connection.close()


@pytest.fixture
def probe() -> DriverProbe:
    return DriverProbe()


@pytest.fixture
def url(empty_postgres_url: str) -> str:
    """A database of the test's own: no other rows for the sequencer to number."""
    migrate(empty_postgres_url)
    return empty_postgres_url


@pytest.fixture
def store(url: str, probe: DriverProbe) -> Iterator[SqlStore]:
    watched = SqlStore(url, pool_size=1)
    probe.attach(watched.engine, watched.reader)
    yield watched
    watched.dispose()


@pytest.fixture
def listener(url: str) -> Iterator[Listener]:
    listening = Listener(url)
    yield listening
    listening.close()


def changed(payment: PaymentSession, status: PaymentStatus) -> PaymentStatusChanged:
    return PaymentStatusChanged(payment.payment_id, payment.stripe_session_id, payment.user_id,
                                payment.status, status)


def commit_status_change(store: SqlStore, payment: PaymentSession, *events: DomainEvent) -> None:
    """The payment moved to CANCELLED in one unit (a read, then the write with the commit)."""
    with store() as unit:
        found = unit.payments.by_payment_id(payment.payment_id)
        assert found is not None
        unit.payments.save(replace(found, status=PaymentStatus.CANCELLED))
        unit.events.extend(events)
        unit.commit()


def test_a_status_change_without_a_ledger_row_notifies_with_its_commit(
    store: SqlStore, probe: DriverProbe, listener: Listener,
) -> None:
    payment = a_payment()
    with store() as unit:
        unit.payments.add(payment)
        unit.commit()
    trips = probe.round_trips

    commit_status_change(store, payment, changed(payment, PaymentStatus.CANCELLED),
                         changed(payment, PaymentStatus.CANCELLED))  # twice: one notification

    assert probe.round_trips - trips == 2  # the read, then UPDATE + NOTIFY + COMMIT
    assert b"pg_notify" in probe.queries[-1] and probe.queries[-1].endswith(b"COMMIT")
    assert listener.next() == (STATUS_CHANNEL, payment.stripe_session_id)
    marker = a_payment()  # the first notification after this one is the marker's
    with store() as unit:
        unit.payments.add(marker)
        unit.events.append(changed(marker, PaymentStatus.EXPIRED))
        unit.commit()
    assert listener.next() == (STATUS_CHANNEL, marker.stripe_session_id)


def test_ledger_writes_and_status_changes_with_a_ledger_row_notify_nothing(
    store: SqlStore, listener: Listener,
) -> None:
    """A change that came with a ledger row reaches watchers through the feed (the sequencer's
    notification); a ledger write never notifies; nor does a change with no Checkout Session."""
    credited, unnamed, marker = a_payment(), a_payment(), a_payment()
    with store() as unit:
        for payment in (credited, unnamed, marker):
            unit.payments.add(payment)
        unit.commit()
    with store() as unit:
        account = unit.accounts.lock(credited.user_id)
        entry = unit.ledger.add(account.credit(Posting(
            key=new_id("purchase"), type=TransactionType.PURCHASE, coins=550,
            session_id=credited.stripe_session_id), NOW))
        unit.accounts.save(account)
        unit.events += [changed(credited, PaymentStatus.COMPLETED), CoinsCredited(entry)]
        unit.commit()
    commit_status_change(store, unnamed,
                         replace(changed(unnamed, PaymentStatus.CANCELLED), session_id=""))

    commit_status_change(store, marker, changed(marker, PaymentStatus.CANCELLED))

    assert listener.next() == (STATUS_CHANNEL, marker.stripe_session_id)


def grant(store: SqlStore) -> None:
    with store() as unit:
        account = unit.accounts.lock(new_id("user"))
        unit.ledger.add(account.credit(Posting(key=new_id("grant"), type=TransactionType.GRANT,
                                               coins=1), NOW))
        unit.accounts.save(account)
        unit.commit()


def test_the_sequencer_notifies_once_per_commit_with_the_top_position(
    store: SqlStore, url: str, listener: Listener,
) -> None:
    for _ in range(3):
        grant(store)
    sequencer = FeedSequencer(url)
    try:
        first = sequencer.sequence_once()
        nothing = sequencer.sequence_once()
        grant(store)
        second = sequencer.sequence_once()
    finally:
        sequencer.stop()

    assert (first.numbered, first.top, nothing.numbered, second.numbered) == (3, 3, 0, 1)
    assert listener.next() == (FEED_CHANNEL, "3")  # one for the three rows
    assert listener.next() == (FEED_CHANNEL, "4")  # none for the empty pass
