"""Live updates across replicas (issue 12): two `billing serve` processes on one Postgres.

Replica a runs the fake Stripe in-process, and the fake sends its webhooks to a; replica b uses
that fake too. A watch open on b must hear of a payment credited on a (the sequencer's NOTIFY,
b's listener and tail), and feed consumers that drop and resume at random moments, on either
replica, must see every ledger row exactly once, in one order."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from billing.client import BillingClient, BillingClientError
from billing.domain.feed import decode_cursor
from billing.domain.ledger import TransactionType
from billing.domain.payment import PaymentStatus
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ADMIN_TOKEN,
    pay_on_fake_checkout_page,
    wait_for,
)
from tests.faults.processes import ServeProcess, base_env

STREAM_ENV = {"BILLING_FEED_POLL_S": "0.5", "BILLING_STREAM_CHECKPOINT_S": "0.5"}


@pytest.fixture
def replicas(fresh_database: str, serve_factory, tmp_path: Path) -> Iterator[list[ServeProcess]]:
    a_env = base_env(tmp_path / "a", fresh_database, **STREAM_ENV)
    a = serve_factory(a_env, "a")
    a.start()
    b = serve_factory(base_env(tmp_path / "b", fresh_database, STRIPE_API_BASE=a.fake_stripe_url,
                               **STREAM_ENV), "b")
    b.start()
    yield [a, b]


def test_a_watch_on_one_replica_sees_the_payment_credited_on_the_other(replicas):
    a, b = replicas
    user = f"watcher-{uuid.uuid4().hex[:8]}"
    with BillingClient(b.grpc_target, token=ADMIN_TOKEN) as billing:
        checkout = billing.create_checkout_session(
            user, "coins_500", "https://game.example/ok", "https://game.example/no")
        seen: list = []
        watching = threading.Thread(target=lambda: seen.extend(
            billing.watch_payment_status(user, checkout.session_id, timeout=30)))
        watching.start()
        wait_for(lambda: seen, 10, "the watch's first message")
        assert seen[0].status is PaymentStatus.PENDING
        assert pay_on_fake_checkout_page(checkout.checkout_url) == 200  # its webhook goes to a
        watching.join(30)
        assert not watching.is_alive(), "the watch did not end"
    assert [info.status for info in seen] == [PaymentStatus.PENDING, PaymentStatus.COMPLETED]
    assert seen[-1].coins_added == 550 and seen[-1].new_balance == 550


def test_a_watch_on_one_replica_sees_a_cancel_made_on_the_other(replicas):
    """A status change without a ledger row travels on its own channel (billing_status)."""
    a, b = replicas
    user = f"canceller-{uuid.uuid4().hex[:8]}"
    with BillingClient(b.grpc_target, token=ADMIN_TOKEN) as on_b, \
            BillingClient(a.grpc_target, token=ADMIN_TOKEN) as on_a:
        checkout = on_b.create_checkout_session(
            user, "coins_500", "https://game.example/ok", "https://game.example/no")
        seen: list = []
        watching = threading.Thread(target=lambda: seen.extend(
            on_b.watch_payment_status(user, checkout.session_id, timeout=30)))
        watching.start()
        wait_for(lambda: seen, 10, "the watch's first message")
        # CANCELLED, or EXPIRED when the fake's `expired` webhook (sent as the cancel expires
        # the session on Stripe) is applied first: either way no ledger row is written.
        ended = on_a.cancel_checkout_session(user, checkout.session_id)
        assert ended in (PaymentStatus.CANCELLED, PaymentStatus.EXPIRED)
        watching.join(30)
        assert not watching.is_alive(), "the watch did not end"
    assert [info.status for info in seen] == [PaymentStatus.PENDING, ended]


# -- the feed under load -------------------------------------------------------------------------
@dataclass
class Consumer:
    """Reads the feed (one user's, or everyone's) through BillingClient, dropping its stream
    at random moments and resuming from the last cursor it processed, on a random replica."""

    name: str
    user_id: str
    targets: list[str]
    seed: int
    rows: list[tuple[int, pb.Transaction | object]] = field(default_factory=list)
    drops: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(self.seed)
        cursor = ""
        try:
            while not self.stop.is_set():
                budget = rng.randint(1, 40)  # events before the next drop
                with BillingClient(rng.choice(self.targets), token=ADMIN_TOKEN) as billing:
                    events = billing.stream_transactions(self.user_id, after_cursor=cursor)
                    for event in events:
                        if event.transaction is not None:
                            self.rows.append((decode_cursor(event.cursor), event.transaction))
                        cursor = event.cursor  # processed: resume after it
                        budget -= 1
                        if budget <= 0 or self.stop.is_set():
                            break
                    events.close()
                self.drops += 1
        except BaseException as error:  # surfaced by the test
            self.error = error


def test_feed_consumers_that_drop_and_resume_see_every_row_once_in_one_order(replicas):
    a, b = replicas
    targets = [a.grpc_target, b.grpc_target]
    run = uuid.uuid4().hex[:6]
    users = [f"feed-{run}-{n}" for n in range(5)]
    consumers = [
        Consumer("all-1", "", targets, 1), Consumer("all-2", "", targets, 2),
        Consumer("user-0", users[0], targets, 3), Consumer("user-1", users[1], targets, 4),
    ]
    threads = [threading.Thread(target=c.run, name=c.name) for c in consumers]
    for thread in threads:
        thread.start()

    def grants_and_spends(seed: int) -> None:
        rng = random.Random(seed)
        with BillingClient(rng.choice(targets), token=ADMIN_TOKEN) as billing:
            for _ in range(60):
                user = rng.choice(users)
                if rng.random() < 0.6:
                    billing.grant_coins(user, rng.randint(1, 50), "load")
                else:
                    try:
                        billing.spend_coins(user, rng.randint(1, 40), "load")
                    except BillingClientError as refused:
                        assert refused.reason == "INSUFFICIENT_COINS"

    def purchases(seed: int) -> None:
        rng = random.Random(seed)
        with BillingClient(rng.choice(targets), token=ADMIN_TOKEN) as billing:
            for _ in range(4):
                checkout = billing.create_checkout_session(
                    rng.choice(users), "coins_500", "https://g.example/ok", "https://g.example/x")
                assert pay_on_fake_checkout_page(checkout.checkout_url) == 200

    with ThreadPoolExecutor(6) as pool:
        work = [pool.submit(grants_and_spends, n) for n in range(4)]
        work += [pool.submit(purchases, 100 + n) for n in range(2)]
        for done in work:
            done.result()

    with BillingClient(a.grpc_target, token=ADMIN_TOKEN) as billing:
        purchases_credited = lambda: sum(  # noqa: E731
            t.type is TransactionType.PURCHASE for u in users
            for t in billing.iter_transactions(u)) == 8
        wait_for(purchases_credited, 60, "every purchase to be credited")
    orders = check_consumers(consumers, threads, users, a.grpc_target)
    assert orders["all-1"] == orders["all-2"]  # one total order, whoever reads it


def check_consumers(
    consumers: list[Consumer], threads: list[threading.Thread], users: list[str], target: str
) -> dict[str, list[str]]:
    """Once the writes are over: every consumer catches up, then saw each of `users`' ledger
    rows exactly once, in feed order, with each user's balance chain unbroken and summing to
    GetBalance. Returns each consumer's row ids of those users, in the order it saw them."""
    with BillingClient(target, token=ADMIN_TOKEN) as billing:
        expected = {u: list(reversed(list(billing.iter_transactions(u)))) for u in users}
        balances = {u: billing.get_balance(u) for u in users}
    every_id = {t.id for rows in expected.values() for t in rows}

    def has_all(consumer: Consumer) -> bool:
        want = every_id if not consumer.user_id else {t.id for t in expected[consumer.user_id]}
        return want <= {t.id for _, t in consumer.rows}

    try:
        for consumer in consumers:
            wait_for(lambda c=consumer: c.error or has_all(c), 60, f"{consumer.name} to catch up")
    finally:
        for consumer in consumers:
            consumer.stop.set()
        for thread in threads:
            thread.join(30)
    orders = {}
    for consumer in consumers:
        assert consumer.error is None, f"{consumer.name}: {consumer.error!r}"
        assert consumer.drops >= 2, f"{consumer.name} never dropped and resumed"
        positions = [p for p, _ in consumer.rows]
        ids = [t.id for _, t in consumer.rows]
        assert positions == sorted(set(positions)), f"{consumer.name}: a repeat or out of order"
        assert len(ids) == len(set(ids)), f"{consumer.name}: a row twice"
        mine = [t for _, t in consumer.rows if t.user_id in users]
        if consumer.user_id:
            assert {t.user_id for t in mine} == {consumer.user_id}
        for user in {t.user_id for t in mine}:
            theirs = [t for t in mine if t.user_id == user]
            assert [t.id for t in theirs] == [t.id for t in expected[user]], (
                f"{consumer.name}: {user}'s rows differ from the ledger")
            balance = 0
            for t in theirs:
                balance += t.coins
                assert t.balance_after == balance, f"{consumer.name}: {user}'s chain broke"
            assert balance == balances[user]
        orders[consumer.name] = [t.id for t in mine]
    return orders
