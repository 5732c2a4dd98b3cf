"""Exactly-once money under real concurrency on Postgres: real use cases, real threads released
together by a barrier, and two OS processes acting as two replicas."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest

from billing.adapters.memory import InMemoryPaymentGateway
from billing.adapters.sql import SqlStore, migrate
from billing.domain.catalog import default_catalog
from billing.domain.errors import (
    CoinsAlreadySpent,
    InsufficientCoins,
    NotRefundable,
)
from billing.domain.ledger import LedgerEntry
from billing.domain.payment import PaymentStatus
from billing.ports import RefundParams, RefundSnapshot
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent, EventApplied
from billing.use_cases.audit import Audit
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.refund_payment import RefundCommand, RefundPayment, RefundResult
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
from tests.blocking import blocking

from .sql_storm import (
    PaidSession,
    assert_ledger_consistent,
    balance,
    coins_credited,
    ledger_rows,
    purchase_credits,
    run_together,
    runner,
)

REPLICA = Path(__file__).with_name("sql_replica.py")
CATALOG = default_catalog()


@pytest.fixture(scope="module")
def database_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A database of this module's own: the fake gateway numbers its sessions from 1, so two
    gateways must never write to the same database."""
    url: str = postgres_server.create_database()
    migrate(url)
    return url


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[SqlStore]:
    sql_store = SqlStore(database_url, pool_size=10)
    yield sql_store
    sql_store.dispose()


@pytest.fixture(scope="module")
def gateway() -> InMemoryPaymentGateway:
    return InMemoryPaymentGateway()


@pytest.fixture
def units(store: SqlStore) -> UnitRunner:
    return runner(store)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def paid_checkout(
    units: UnitRunner, gateway: InMemoryPaymentGateway, user_id: str, package_id: str = "coins_500"
) -> PaidSession:
    created = blocking(CreateCheckout(units, gateway, CATALOG))(CreateCheckoutCommand(
        user_id=user_id, package_id=package_id, success_url="https://shop.example/ok",
        cancel_url="https://shop.example/cancel", request_id=new_id("req"),
    ))
    snapshot = gateway.pay(created.session_id)
    return PaidSession(created.session_id, created.payment_id, snapshot.payment_intent_id,
                       snapshot.amount.currency, snapshot.amount.amount_minor)


def test_fifty_deliveries_of_one_paid_completion_credit_once(
    store: SqlStore, units: UnitRunner, gateway: InMemoryPaymentGateway,
) -> None:
    user_id = new_id("user")
    paid = paid_checkout(units, gateway, user_id)
    event = paid.completed(new_id("evt"))
    apply = ApplyPaymentEvent(units)

    results = run_together([partial(apply, event)] * 50)

    assert all(isinstance(result, EventApplied) for result in results), results
    assert sum(not result.duplicate for result in results) == 1  # type: ignore[union-attr]
    assert purchase_credits(store.engine, paid.payment_id) == 1
    assert balance(store.engine, user_id) == CATALOG.get("coins_500").total_coins
    assert_ledger_consistent(store.engine, user_id)


def test_fifty_distinct_events_for_one_session_credit_once(
    store: SqlStore, units: UnitRunner, gateway: InMemoryPaymentGateway,
) -> None:
    user_id = new_id("user")
    paid = paid_checkout(units, gateway, user_id)
    apply = ApplyPaymentEvent(units)

    results = run_together([partial(apply, paid.completed(new_id("evt"))) for _ in range(50)])

    assert all(isinstance(result, EventApplied) and not result.duplicate for result in results)
    assert purchase_credits(store.engine, paid.payment_id) == 1
    assert balance(store.engine, user_id) == CATALOG.get("coins_500").total_coins
    assert_ledger_consistent(store.engine, user_id)


def test_two_hundred_spends_of_one_coin_against_a_balance_of_one_hundred(
    store: SqlStore, units: UnitRunner,
) -> None:
    user_id = new_id("user")
    GrantCoins(units)(CoinsCommand(user_id=user_id, coins=100, reason="seed",
                                   idempotency_key="seed"))
    spend = SpendCoins(units)
    commands = [CoinsCommand(user_id=user_id, coins=1, reason="play", idempotency_key=f"s{i}")
                for i in range(200)]

    results = run_together([partial(spend, command) for command in commands])

    spent = [result for result in results if isinstance(result, LedgerEntry)]
    refused = [result for result in results if isinstance(result, InsufficientCoins)]
    assert (len(spent), len(refused)) == (100, 100), [r for r in results if r not in spent]
    assert sorted(entry.balance_after for entry in spent) == list(range(100))
    assert balance(store.engine, user_id) == 0
    assert_ledger_consistent(store.engine, user_id)


def test_concurrent_grants_to_a_new_user_all_land(store: SqlStore, units: UnitRunner) -> None:
    user_id = new_id("user")
    grant = GrantCoins(units)
    commands = [CoinsCommand(user_id=user_id, coins=i + 1, reason="gift",
                             idempotency_key=f"g{i}") for i in range(30)]

    results = run_together([partial(grant, command) for command in commands])

    assert all(isinstance(result, LedgerEntry) for result in results), results
    assert balance(store.engine, user_id) == sum(range(1, 31))
    assert_ledger_consistent(store.engine, user_id)


def test_concurrent_retries_of_one_spend_debit_once(store: SqlStore, units: UnitRunner) -> None:
    user_id = new_id("user")
    GrantCoins(units)(CoinsCommand(user_id=user_id, coins=10, reason="seed",
                                   idempotency_key="seed"))
    retry = CoinsCommand(user_id=user_id, coins=3, reason="play", idempotency_key="once")

    results = run_together([partial(SpendCoins(units), retry)] * 30)

    assert all(isinstance(result, LedgerEntry) for result in results), results
    assert len({result.seq for result in results}) == 1  # type: ignore[union-attr]
    assert balance(store.engine, user_id) == 7
    assert_ledger_consistent(store.engine, user_id)


def test_a_mixed_storm_keeps_every_balance_equal_to_its_ledger(
    store: SqlStore, units: UnitRunner, gateway: InMemoryPaymentGateway,
) -> None:
    shuffle = random.Random(20260304).shuffle
    users = [new_id("storm") for _ in range(4)]
    create = blocking(CreateCheckout(units, gateway, CATALOG))
    apply, spend, grant = ApplyPaymentEvent(units), SpendCoins(units), GrantCoins(units)
    refund = blocking(RefundPayment(units, gateway))

    # Checkouts first, each request sent twice at once: one session per request.
    requests = [CreateCheckoutCommand(user_id=user, package_id=package,
                                      success_url="https://shop.example/ok",
                                      cancel_url="https://shop.example/cancel",
                                      request_id=f"req-{package}")
                for user in users for package in ("coins_100", "coins_500", "coins_1000")]
    created = run_together([partial(create, request) for request in requests for _ in (1, 2)])
    assert all(not isinstance(result, Exception) for result in created), created
    assert created[0::2] == created[1::2]
    sessions = {}
    for request, checkout in zip(requests, created[0::2], strict=True):
        snapshot = gateway.pay(checkout.session_id)  # type: ignore[union-attr]
        sessions[checkout.session_id] = (request.user_id, PaidSession(  # type: ignore[union-attr]
            snapshot.session_id, snapshot.payment_id, snapshot.payment_intent_id,
            snapshot.amount.currency, snapshot.amount.amount_minor))

    work: list[tuple[str, Callable[[], object]]] = []
    for _user, paid in sessions.values():
        duplicated = paid.completed(new_id("evt"))
        work += [("event", partial(apply, duplicated)), ("event", partial(apply, duplicated)),
                 ("event", partial(apply, paid.completed(new_id("evt"))))]
    for user in users:
        for i in range(8):
            command = CoinsCommand(user_id=user, coins=1 + (i * 37) % 300, reason="play",
                                   idempotency_key=f"spend-{i}")
            work += [("spend", partial(spend, command))] * (2 if i % 3 == 0 else 1)
        for i in range(3):
            command = CoinsCommand(user_id=user, coins=10 * (i + 1), reason="gift",
                                   idempotency_key=f"grant-{i}")
            work += [("grant", partial(grant, command))] * (2 if i == 0 else 1)
        refunded = next(cs for cs, (owner, _) in sessions.items() if owner == user)
        command = RefundCommand(user_id=user, session_id=refunded, reason="changed my mind",
                                request_id="refund-1")
        work += [("refund", partial(refund, command))] * 2
    shuffle(work)

    results = run_together([action for _, action in work])

    expected = {
        "event": (EventApplied,),
        "spend": (LedgerEntry, InsufficientCoins),
        "grant": (LedgerEntry,),
        "refund": (RefundResult, NotRefundable, CoinsAlreadySpent),
    }
    for (kind, _), result in zip(work, results, strict=True):
        assert isinstance(result, expected[kind]), (kind, result)

    for user in users:
        assert_ledger_consistent(store.engine, user)
        rows = ledger_rows(store.engine, user)
        spends = {r.seq for r in results if isinstance(r, LedgerEntry) and r.user_id == user
                  and r.coins < 0}
        assert len(spends) == sum(1 for row in rows if row[0] == "USAGE")
        assert sum(1 for row in rows if row[0] == "GRANT") == 3
        assert sum(1 for row in rows if row[0] == "REFUND") <= 1
    for _user, paid in sessions.values():
        assert purchase_credits(store.engine, paid.payment_id) == 1
        assert coins_credited(store.engine, paid.payment_id) > 0
    audit = Audit(units)()  # and the service's own audit agrees, over the whole database
    assert audit.ok, audit.violations


def test_the_slower_of_two_concurrent_duplicate_refunds_gets_the_same_answer(
    units: UnitRunner, gateway: InMemoryPaymentGateway,
) -> None:
    user_id = new_id("user")
    paid = paid_checkout(units, gateway, user_id)
    ApplyPaymentEvent(units)(paid.completed(new_id("evt")))
    command = RefundCommand(user_id=user_id, session_id=paid.stripe_session_id, reason="twice",
                            request_id="refund-once")
    duplicate_answers: list[RefundResult] = []

    class DuplicateWhileStripeAnswers:
        """The duplicate runs from start to end while the first call waits on Stripe."""

        def __getattr__(self, name: str) -> object:
            return getattr(gateway, name)

        async def refund(self, params: RefundParams) -> RefundSnapshot:
            snapshot = await gateway.refund(params)
            if not duplicate_answers:
                duplicate_answers.append(RefundResult(status=PaymentStatus.PENDING,
                                                      coins_debited=0, new_balance=0))
                duplicate_answers[0] = await RefundPayment(units, gateway)(command)
            return snapshot

    first = blocking(RefundPayment(units, DuplicateWhileStripeAnswers()))(command)  # type: ignore[arg-type]

    assert first == duplicate_answers[0]


def test_two_replica_processes_apply_the_same_events_once(
    database_url: str, store: SqlStore, units: UnitRunner, gateway: InMemoryPaymentGateway,
) -> None:
    user_id = new_id("replicas")
    sessions = [paid_checkout(units, gateway, user_id) for _ in range(10)]
    events = []
    for paid in sessions:
        shared = new_id("evt")
        events += [(asdict(paid), shared), (asdict(paid), shared), (asdict(paid), new_id("evt"))]
    spec = json.dumps({"url": database_url, "events": events})

    replicas = [subprocess.Popen([sys.executable, str(REPLICA), spec], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    try:
        for replica in replicas:  # both connected and waiting: then both start at once
            assert replica.stdout is not None and replica.stdout.readline().strip() == "ready"
        for replica in replicas:  # "go" to every replica before waiting for any of them
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        outputs = [replica.communicate(timeout=120) for replica in replicas]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
    for replica, (_, errors) in zip(replicas, outputs, strict=True):
        assert replica.returncode == 0, errors

    first_applications: dict[str, int] = {}
    for stdout, _ in outputs:
        for event_id, count in json.loads(stdout)["first_applications"].items():
            first_applications[event_id] = first_applications.get(event_id, 0) + count
    assert first_applications == {event_id: 1 for _, event_id in events}
    for paid in sessions:
        assert purchase_credits(store.engine, paid.payment_id) == 1
    assert balance(store.engine, user_id) == 10 * CATALOG.get("coins_500").total_coins
    assert_ledger_consistent(store.engine, user_id)
