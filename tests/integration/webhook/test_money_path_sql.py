"""The same money path over the real SQL store (SQLite, and Postgres when reachable): concurrent
and reordered deliveries through the receiver still credit once (rules 4 and 7)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from billing.adapters.memory import InMemoryPaymentGateway, ManualClock, RecordingNotifier
from billing.adapters.metrics import Metrics
from billing.adapters.sql.store import SqlStore
from billing.adapters.webhook import create_public_app
from billing.domain.catalog import default_catalog
from billing.domain.payment import PaymentStatus
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from tests.blocking import blocking

from .conftest import NOW, SECRET, StripeSender
from .harness import Reply, RunningApp, committed_by_group
from .stripe_events import CheckoutEvents, unique


class SqlService:
    def __init__(self, url: str) -> None:
        self.store = SqlStore(url, pool_size=25)
        self.units = UnitRunner(self.store, ManualClock(), RecordingNotifier())  # type: ignore[arg-type]
        self.apply_event = ApplyPaymentEvent(self.units)
        self.create_checkout = blocking(CreateCheckout(self.units, InMemoryPaymentGateway(),
                                                       default_catalog()))

    def checkout(self, user_id: str) -> CheckoutEvents:
        created = self.create_checkout(
            CreateCheckoutCommand(user_id=user_id, package_id="coins_1000",
                                  success_url="https://game.example/ok",
                                  cancel_url="https://game.example/cancel",
                                  request_id=unique("req"))
        )
        return CheckoutEvents.for_session(created.session_id, created.payment_id, user_id,
                                          9999, "usd", NOW)

    def status(self, session_id: str) -> PaymentStatus:
        with self.store(read_only=True) as unit:
            session = unit.payments.by_stripe_session(session_id)
            assert session is not None
            return session.status

    def assert_balance(self, user_id: str, expected: int) -> None:
        """The balance, and it is the sum of the user's ledger rows (rule 5)."""
        with self.store(read_only=True) as unit:
            account = unit.accounts.get(user_id)
            rows = unit.ledger.page(user_id, None, 500)
        assert account is not None and account.balance == expected
        assert sum(row.coins for row in rows) == expected


# The in-memory gateway numbers its sessions from 1, so the shared Postgres database is emptied.
@pytest.fixture(params=["sqlite_url", "clean_postgres_url"])
def sql_service(request: pytest.FixtureRequest) -> Iterator[SqlService]:
    url = request.getfixturevalue(request.param)
    service = SqlService(url)
    yield service
    service.store.engine.dispose()


@pytest.fixture
def sql_stripe(sql_service: SqlService) -> Iterator[StripeSender]:
    app = create_public_app(committed_by_group(sql_service.apply_event, Metrics()), [SECRET],
                            Metrics(), now=lambda: float(NOW))
    with RunningApp(app) as running:
        yield StripeSender(running.port)


def deliver_concurrently(stripe: StripeSender, documents: list[dict[str, Any]]) -> list[Reply]:
    start = threading.Barrier(len(documents))

    def deliver(document: dict[str, Any]) -> Reply:
        start.wait()
        return stripe.send(document)

    with ThreadPoolExecutor(len(documents)) as pool:
        return list(pool.map(deliver, documents))


def test_twenty_concurrent_copies_credit_once(sql_service, sql_stripe):
    user = unique("user")
    events = sql_service.checkout(user)
    replies = deliver_concurrently(sql_stripe, [events.completed()] * 20)
    assert {reply.status for reply in replies} == {200}
    assert sorted(reply.json()["duplicate"] for reply in replies) == [False] + [True] * 19
    sql_service.assert_balance(user, 1200)


def test_concurrent_distinct_events_and_reorderings_credit_once(sql_service, sql_stripe):
    user = unique("user")
    events = sql_service.checkout(user)
    documents = [events.expired(), events.async_succeeded(),
                 events.completed(payment_status="unpaid")] + [events.completed()] * 3
    replies = deliver_concurrently(sql_stripe, documents)
    assert {reply.status for reply in replies} == {200}
    assert sql_service.status(events.session_id) is PaymentStatus.COMPLETED
    sql_service.assert_balance(user, 1200)
