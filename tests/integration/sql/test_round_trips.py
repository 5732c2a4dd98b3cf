"""Round trips per operation on Postgres (issue 11): counted at the driver, BEGIN and COMMIT
included, equal to the store's own count, and cross-checked with the transactions Postgres
committed (pg_stat_database.xact_commit).

Bars: a credit (a paid checkout.session.completed) <= 4, SpendCoins and GrantCoins <= 4,
GetBalance exactly 1. The assertions are the exact counts the unit of work achieves: one round
trip per read that reaches the database, plus one for a writing unit (its writes travel with
its next read or with COMMIT).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from billing.adapters.memory import InMemoryPaymentGateway
from billing.adapters.sql import SqlStore, migrate
from billing.container import build_container
from billing.domain.catalog import default_catalog
from billing.settings import parse
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.get_payment_status import GetPaymentStatus
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.list_transactions import ListTransactions
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
from tests.blocking import blocking

from .driver import DriverProbe
from .sql_storm import PaidSession, runner

CATALOG = default_catalog()
FLUSH_STATISTICS = ("SELECT pg_stat_force_next_flush(),"
                    " (SELECT count(*) FROM accounts WHERE user_id = '')")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Counts:
    round_trips: int  # at the driver
    counted: int  # by the store's on_round_trip hook
    commits: int  # transactions Postgres committed
    rollbacks: int
    queries: list[bytes]


class Observed:
    """A store with one connection per pool, watched at the driver and by its own counter, on a
    database nobody else uses (so its transaction counters are this store's)."""

    def __init__(self, url: str, admin_url: str) -> None:
        self.database = url.rsplit("/", 1)[1]
        self.hook = 0
        self.store = SqlStore(url, pool_size=1, on_round_trip=self._count)
        self.probe = DriverProbe()
        self.probe.attach(self.store.engine, self.store.reader)
        self.units = runner(self.store)
        self.gateway = InMemoryPaymentGateway()
        self._admin = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def _count(self) -> None:
        self.hook += 1

    def measure(self, prepare: Callable[[], Callable[[], object]]) -> Counts:
        """Counts of one call of the action `prepare()` returns. A first action, unmeasured,
        opens the connections (and prepares the statements) the measured one then finds."""
        prepare()()
        action = prepare()
        self._flush_statistics()
        commits, rollbacks = self._transactions()
        trips, counted, sent = self.probe.round_trips, self.hook, len(self.probe.queries)
        action()
        trips, counted = self.probe.round_trips - trips, self.hook - counted
        queries = self.probe.queries[sent:]
        self._flush_statistics()  # one rollback (the writer's) and one commit (the reader's)
        after_commits, after_rollbacks = self._transactions()
        return Counts(trips, counted, after_commits - commits - 1,
                      after_rollbacks - rollbacks - 1, queries)

    def _flush_statistics(self) -> None:
        """Make both of the store's backends publish their transaction counts now: Postgres 15
        does so when a backend goes idle, forced by pg_stat_force_next_flush() (and only if some
        table's counts are pending too, hence the scan)."""
        with self.store() as writer:  # not committed: ends with a ROLLBACK
            writer.execute(FLUSH_STATISTICS)
        with self.store(read_only=True) as reader:
            reader.execute(FLUSH_STATISTICS)

    def _transactions(self) -> tuple[int, int]:
        # From another database: this connection's own transactions are not counted here.
        with self._admin.connect() as connection:
            commits, rollbacks = connection.execute(
                text("SELECT xact_commit, xact_rollback FROM pg_stat_database"
                     " WHERE datname = :name"), {"name": self.database},
            ).one()
        return int(commits), int(rollbacks)

    def checkout(self, user_id: str) -> Callable[[], PaidSession]:
        def create() -> PaidSession:
            create_checkout = blocking(CreateCheckout(self.units, self.gateway, CATALOG))
            created = create_checkout(CreateCheckoutCommand(
                user_id=user_id, package_id="coins_500", success_url="https://shop.example/ok",
                cancel_url="https://shop.example/cancel", request_id=new_id("req"),
            ))
            snapshot = self.gateway.pay(created.session_id)
            return PaidSession(created.session_id, created.payment_id,
                               snapshot.payment_intent_id, snapshot.amount.currency,
                               snapshot.amount.amount_minor)

        return create

    def close(self) -> None:
        self.store.dispose()
        self._admin.dispose()


@pytest.fixture(scope="module")
def observed(postgres_server) -> Iterator[Observed]:  # type: ignore[no-untyped-def]
    url: str = postgres_server.create_database()
    migrate(url)
    watched = Observed(url, postgres_server.base.render_as_string(hide_password=False))
    yield watched
    watched.close()


def test_a_webhook_credit_is_four_round_trips_and_one_transaction(observed: Observed) -> None:
    user_id = new_id("user")

    def credit() -> Callable[[], object]:
        paid = observed.checkout(user_id)()
        return lambda: ApplyPaymentEvent(observed.units)(paid.completed(new_id("evt")))

    counts = observed.measure(credit)

    # inbox row, session, account lock (+ its ledger seq); then the writes with COMMIT
    assert counts.round_trips == counts.counted == 4 <= 4
    assert (counts.commits, counts.rollbacks) == (1, 0)
    assert counts.queries[0].startswith(b"BEGIN ISOLATION LEVEL READ COMMITTED;")
    assert counts.queries[-1].endswith(b";COMMIT")


def test_a_batch_of_webhook_credits_is_four_round_trips_and_one_transaction_in_all(
    observed: Observed,
) -> None:
    """Group commit: the batch's inbox rows, sessions and accounts are read (and locked) one
    kind at a time, then every event applies from memory, and its writes go with the COMMIT."""

    def credits() -> Callable[[], object]:
        paid = [observed.checkout(new_id("user"))() for _ in range(8)]
        events = [session.completed(new_id("evt")) for session in paid]
        return lambda: ApplyPaymentEvent(observed.units).apply_all(events)

    counts = observed.measure(credits)

    assert counts.round_trips == counts.counted == 4
    assert (counts.commits, counts.rollbacks) == (1, 0)
    assert counts.queries[-1].endswith(b";COMMIT")


@pytest.mark.parametrize("use_case", [SpendCoins, GrantCoins])
def test_spending_or_granting_coins_is_three_round_trips_and_one_transaction(
    observed: Observed, use_case: type[SpendCoins] | type[GrantCoins],
) -> None:
    user_id = new_id("user")
    GrantCoins(observed.units)(CoinsCommand(user_id=user_id, coins=1000, reason="seed",
                                            idempotency_key="seed"))

    def post() -> Callable[[], object]:
        command = CoinsCommand(user_id=user_id, coins=1, reason="play",
                               idempotency_key=new_id("key"))
        return lambda: use_case(observed.units)(command)

    counts = observed.measure(post)

    # idempotency record, account lock (+ its ledger seq); then the writes with COMMIT
    assert counts.round_trips == counts.counted == 3 <= 4
    assert (counts.commits, counts.rollbacks) == (1, 0)


def test_get_balance_is_one_round_trip(observed: Observed) -> None:
    user_id = new_id("user")
    GrantCoins(observed.units)(CoinsCommand(user_id=user_id, coins=5, reason="seed",
                                            idempotency_key="seed"))

    counts = observed.measure(lambda: lambda: GetBalance(observed.units)(user_id))

    assert counts.round_trips == counts.counted == 1
    assert (counts.commits, counts.rollbacks) == (1, 0)  # the statement's own, autocommitted
    assert not counts.queries[0].startswith(b"BEGIN")


def test_the_other_reads_are_one_round_trip_per_read(observed: Observed) -> None:
    user_id = new_id("user")
    paid = observed.checkout(user_id)()
    ApplyPaymentEvent(observed.units)(paid.completed(new_id("evt")))

    status = observed.measure(
        lambda: lambda: GetPaymentStatus(observed.units)(user_id, paid.stripe_session_id))
    history = observed.measure(lambda: lambda: ListTransactions(observed.units)(user_id))

    assert (status.round_trips, status.counted, status.commits) == (2, 2, 2)  # session, balance
    assert (history.round_trips, history.counted, history.commits) == (1, 1, 1)


def test_creating_a_checkout_is_two_units_of_two_round_trips(observed: Observed) -> None:
    counts = observed.measure(lambda: observed.checkout(new_id("user")))

    # record: by request id, then INSERT + COMMIT; attach: the row, then UPDATE + COMMIT
    assert counts.round_trips == counts.counted == 4
    assert (counts.commits, counts.rollbacks) == (2, 0)


def test_the_service_counts_its_round_trips_in_a_metric_and_sizes_its_pools_by_setting(
    postgres_url: str,
) -> None:
    container = build_container(parse({"BILLING_DATABASE_URL": postgres_url,
                                       "BILLING_DB_POOL_SIZE": "3"}))
    store = container.store()
    metrics = container.metrics()
    try:
        assert store.ping()
        GetBalance(container.units())("anyone")
        assert metrics.registry.get_sample_value("billing_db_round_trips_total") == 2
        assert store.engine.pool.size() == store.reader.pool.size() == 3
    finally:
        store.dispose()
