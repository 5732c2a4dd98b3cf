"""How SqlUnitOfWork uses the database: isolation per kind of unit, SKIP LOCKED claims, and
the pool gauge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from billing.adapters.sql import SqlStore
from billing.adapters.sql.repositories.base import STREAM_BATCH
from billing.domain.ledger import LedgerEntry, TransactionType
from billing.domain.money import Money
from billing.domain.payment import PaymentSession


def test_writers_run_at_read_committed_readers_autocommit_and_snapshots_read_only(
    postgres_url: str,
) -> None:
    store = SqlStore(postgres_url, pool_size=1)  # one connection each: characteristics reused
    show = ("SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only'), now() = statement_timestamp()")
    try:
        for _ in range(2):  # and the characteristics do not leak from one unit to the next
            with store() as writer:
                writer.execute("SELECT pg_sleep(0.01)")  # the transaction outlives it
                assert writer.execute(show)[0] == ("read committed", "off", False)
            with store(snapshot=True) as snapshot:
                snapshot.execute("SELECT pg_sleep(0.01)")
                assert snapshot.execute(show)[0] == ("repeatable read", "on", False)
            with store(read_only=True) as reader:  # each read its own one-statement transaction
                reader.execute("SELECT pg_sleep(0.01)")
                assert reader.execute(show)[0] == ("read committed", "off", True)
    finally:
        store.dispose()


def test_pool_in_use_counts_the_connections_units_hold(sqlite_url: str) -> None:
    store = SqlStore(sqlite_url)
    try:
        assert store.pool_in_use() == 0
        with store(read_only=True):
            assert store.pool_in_use() == 1
            with store():
                assert store.pool_in_use() == 2
        assert store.pool_in_use() == 0
    finally:
        store.dispose()


def test_a_claimed_session_is_skipped_by_other_units_until_released(postgres_url: str) -> None:
    store = SqlStore(postgres_url, pool_size=2)
    payment_id = _pending_payment(store)
    try:
        with store() as first:
            assert first.payments.claim(payment_id) is not None
            with store() as second:  # another replica: skips the row instead of waiting
                assert second.payments.claim(payment_id) is None
        with store() as third:
            assert third.payments.claim(payment_id) is not None
    finally:
        store.dispose()


def _pending_payment(store: SqlStore) -> str:
    now = datetime.now(UTC)
    payment = PaymentSession(
        payment_id=f"pay_{uuid.uuid4().hex[:24]}", user_id="claimer",
        request_id=uuid.uuid4().hex, package_id="coins_100", coins=100, bonus=0,
        amount=Money("USD", 99), success_url="https://shop.example/ok",
        cancel_url="https://shop.example/cancel", expires_at=now, created_at=now,
        updated_at=now,
    )
    with store() as unit:
        unit.payments.add(payment)
        unit.commit()
    return payment.payment_id


def test_scans_stream_through_a_server_side_cursor(postgres_url: str) -> None:
    store = SqlStore(postgres_url, pool_size=1)
    user_id = f"scanned-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    rows = STREAM_BATCH * 2 + 1
    try:
        with store() as unit:
            unit.accounts.lock(user_id)
            for n in range(rows):
                unit.ledger.add(LedgerEntry(key=f"{user_id}:{n}", user_id=user_id,
                                            type=TransactionType.GRANT, coins=1,
                                            balance_after=n + 1, created_at=now))
            unit.commit()
        with store(snapshot=True) as unit:
            scan = unit.ledger.scan()
            first = next(scan)
            ((open_cursors,),) = unit.execute("SELECT count(*) FROM pg_cursors")
            mine = [first, *scan]
    finally:
        store.dispose()

    assert open_cursors == 1
    mine = [entry for entry in mine if entry.user_id == user_id]
    assert [entry.balance_after for entry in mine] == list(range(1, rows + 1))
