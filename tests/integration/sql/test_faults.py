"""Database faults: an unreachable or lost database is STORE_UNAVAILABLE (never a crash, never a
silent success), a lost race is a TransientConflict, and the pool outlives a server restart."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from billing.adapters.sql import SqlStore
from billing.adapters.sql.unit_of_work import SqlUnitOfWork
from billing.domain.errors import StoreUnavailable, TransientConflict
from billing.domain.ledger import Account, LedgerEntry, TransactionType
from billing.use_cases.get_balance import GetBalance

from .sql_storm import run_together, runner

UNREACHABLE_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:1/billing"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def named_store(postgres_url: str) -> Iterator[tuple[SqlStore, str]]:
    """A store whose connections carry an application_name of their own, so a test can find
    and kill exactly them."""
    name = new_id("faults")
    store = SqlStore(f"{postgres_url}?application_name={name}", pool_size=3)
    yield store, name
    store.dispose()


def terminate(postgres_url: str, where: str, **params: object) -> int:
    """Kill backends from another connection, waiting until they are gone (Postgres 14+)."""
    engine = create_engine(postgres_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            killed = connection.execute(
                text(f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
                     f" FROM pg_stat_activity WHERE {where}"),
                params,
            ).scalar_one()
    finally:
        engine.dispose()
    return int(killed)


def backend_pid(unit: SqlUnitOfWork) -> int:
    ((pid,),) = unit.execute("SELECT pg_backend_pid()")
    return int(pid)


def an_entry(user_id: str) -> LedgerEntry:
    return LedgerEntry(key=new_id("grant"), user_id=user_id, type=TransactionType.GRANT,
                       coins=5, balance_after=5, created_at=datetime.now(UTC))


def test_an_unreachable_postgres_is_store_unavailable() -> None:
    store = SqlStore(UNREACHABLE_POSTGRES)
    try:
        with pytest.raises(StoreUnavailable), store() as unit:
            unit.accounts.get("anyone")
        with pytest.raises(StoreUnavailable):
            GetBalance(runner(store))("anyone")
        with pytest.raises(StoreUnavailable):
            store.check_schema()
        assert store.ping() is False
    finally:
        store.dispose()


def test_an_unopenable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    store = SqlStore(f"sqlite:///{not_a_directory / 'billing.db'}")
    try:
        with pytest.raises(StoreUnavailable), store() as unit:
            unit.accounts.get("anyone")
        assert store.ping() is False
    finally:
        store.dispose()


def test_ping_answers_true_when_the_database_answers(postgres_url: str, sqlite_url: str) -> None:
    for url in (postgres_url, sqlite_url):
        store = SqlStore(url)
        assert store.ping() is True
        store.dispose()


def test_the_pool_survives_the_server_dropping_every_connection(
    postgres_url: str, named_store: tuple[SqlStore, str],
) -> None:
    store, name = named_store
    balance = GetBalance(runner(store))
    run_together([partial(balance, "anyone")] * 3)  # the pool now holds open connections
    assert store.pool_in_use() == 0

    assert terminate(postgres_url, "application_name = :name", name=name) >= 1

    assert balance("anyone") == 0  # pre-ping found the dead connection and replaced it
    assert store.ping() is True


def test_a_connection_lost_mid_unit_keeps_nothing_and_the_unit_runs_again(
    postgres_url: str, named_store: tuple[SqlStore, str],
) -> None:
    store, _ = named_store
    user_id = new_id("user")
    with pytest.raises(TransientConflict), store() as unit:
        unit.accounts.save(Account(user_id, 10))
        terminate(postgres_url, "pid = :pid", pid=backend_pid(unit))
        unit.accounts.get(new_id("user"))  # not in the unit's identity map: a round trip

    with store(read_only=True) as unit:
        assert unit.accounts.get(user_id) is None

    attempts: list[int] = []

    def work(unit: SqlUnitOfWork) -> int:
        attempts.append(backend_pid(unit))
        unit.accounts.save(Account(user_id, 10))
        if len(attempts) == 1:  # the server drops the first attempt's connection mid-unit
            terminate(postgres_url, "pid = :pid", pid=attempts[0])
        unit.accounts.get(new_id("user"))  # a read the identity map cannot answer
        account = unit.accounts.get(user_id)
        assert account is not None
        return account.balance

    assert runner(store).run(work) == 10  # type: ignore[arg-type]
    assert len(attempts) == 2 and attempts[0] != attempts[1]


def test_a_commit_on_a_lost_connection_is_store_unavailable_not_a_silent_success(
    postgres_url: str, named_store: tuple[SqlStore, str],
) -> None:
    store, _ = named_store
    user_id = new_id("user")
    with pytest.raises(StoreUnavailable), store() as unit:
        unit.accounts.lock(user_id)
        unit.ledger.add(an_entry(user_id))
        terminate(postgres_url, "pid = :pid", pid=backend_pid(unit))
        unit.commit()

    with store(read_only=True) as unit:
        assert unit.accounts.get(user_id) is None
        assert list(unit.ledger.page(user_id, None, 10)) == []


def test_a_deadlock_is_a_transient_conflict_for_one_of_the_two(postgres_url: str) -> None:
    store = SqlStore(postgres_url, pool_size=2)
    first, second = new_id("user"), new_id("user")
    with store() as unit:
        unit.accounts.lock(first)
        unit.accounts.lock(second)
        unit.commit()
    both_hold_one = threading.Barrier(2, timeout=30)

    def lock_in_order(one: str, other: str) -> str:
        with store() as unit:
            unit.accounts.lock(one)
            both_hold_one.wait()
            unit.accounts.lock(other)  # each waits for the other: Postgres picks a victim
            unit.commit()
        return "done"

    try:
        results = run_together([partial(lock_in_order, first, second),
                                partial(lock_in_order, second, first)])
    finally:
        store.dispose()

    assert sorted(type(result).__name__ for result in results) == ["TransientConflict", "str"]


def test_a_sqlite_writer_waiting_too_long_is_a_transient_conflict(sqlite_url: str) -> None:
    holder = SqlStore(sqlite_url)
    impatient = SqlStore(sqlite_url, sqlite_busy_timeout_s=0.05)
    try:
        with holder() as writing:
            writing.accounts.lock(new_id("user"))
            with pytest.raises(TransientConflict), impatient():
                pass
            with impatient(read_only=True) as reading:  # readers are never blocked (WAL)
                assert reading.accounts.get("anyone") is None
            assert impatient.ping() is True
    finally:
        holder.dispose()
        impatient.dispose()
