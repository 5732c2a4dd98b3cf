"""Shared by the concurrency tests and the replica processes: start work together, build paid
completion events, and read back what the ledger says."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, func, select

from billing.adapters.memory import RecordingNotifier
from billing.adapters.sql import SqlStore
from billing.adapters.sql.tables import accounts, ledger, payments
from billing.adapters.system_clock import SystemClock
from billing.domain.money import Money
from billing.domain.payment_events import EventKind, PaymentEvent
from billing.use_cases._unit import UnitRunner

T = TypeVar("T")


def runner(store: SqlStore) -> UnitRunner:
    return UnitRunner(store, SystemClock(), RecordingNotifier())


def run_together(actions: Sequence[Callable[[], T]]) -> list[T | Exception]:
    """Run every action on its own thread, all released at once by a barrier; results (or the
    exception raised) in the order of `actions`."""
    barrier = threading.Barrier(len(actions), timeout=60)
    results: list[T | Exception] = [RuntimeError("never ran")] * len(actions)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = actions[index]()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker never finished"
    return results


@dataclass(frozen=True)
class PaidSession:
    """What a paid checkout.session.completed event says about one of our sessions."""

    stripe_session_id: str
    payment_id: str
    payment_intent_id: str
    currency: str
    amount_minor: int

    def completed(self, event_id: str) -> PaymentEvent:
        return PaymentEvent(
            event_id=event_id,
            type=EventKind.CHECKOUT_COMPLETED.value,
            created=datetime.now(UTC),
            payload="{}",
            stripe_session_id=self.stripe_session_id,
            payment_id=self.payment_id,
            payment_intent_id=self.payment_intent_id,
            payment_status="paid",
            amount=Money(self.currency, self.amount_minor),
        )


def ledger_rows(engine: Engine, user_id: str) -> list[tuple[str, str, int, int, str]]:
    """(type, key, coins, balance_after, payment_id) of a user's rows, oldest first."""
    query = (
        select(ledger.c.type, ledger.c.key, ledger.c.coins, ledger.c.balance_after,
               ledger.c.payment_id)
        .where(ledger.c.user_id == user_id)
        .order_by(ledger.c.seq)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]  # type: ignore[misc]


def balance(engine: Engine, user_id: str) -> int:
    with engine.connect() as connection:
        value = connection.execute(
            select(accounts.c.balance).where(accounts.c.user_id == user_id)
        ).scalar()
    return int(value or 0)


def purchase_credits(engine: Engine, payment_id: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count()).select_from(ledger)
            .where(ledger.c.payment_id == payment_id, ledger.c.type == "PURCHASE")
        ).scalar_one())


def coins_credited(engine: Engine, payment_id: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(
            select(payments.c.coins_credited).where(payments.c.payment_id == payment_id)
        ).scalar_one())


def assert_ledger_consistent(engine: Engine, user_id: str) -> None:
    """The balance is the sum of the rows, each row's balance_after follows from the one before,
    and nothing ever went below zero."""
    rows = ledger_rows(engine, user_id)
    running = 0
    for kind, key, coins, balance_after, _ in rows:
        running += coins
        assert balance_after == running, f"{kind} {key}: balance_after {balance_after} != {running}"
        assert balance_after >= 0
    assert balance(engine, user_id) == running
