"""Real sockets for the aiohttp apps, a plain HTTP client, and the service over in-memory ports.

Each app runs on 127.0.0.1 (port 0) in a thread with its own event loop; requests are made with
http.client from the test's threads, exactly as Stripe's deliveries would arrive.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from billing.adapters.memory import (
    InMemoryPaymentGateway,
    InMemoryStore,
    InMemoryUnitOfWork,
    ManualClock,
    RecordingNotifier,
)
from billing.adapters.metrics import Metrics
from billing.adapters.webhook import ConnectionGuard, GroupCommit
from billing.adapters.webhook.public_app import ApplyEvent
from billing.domain.catalog import default_catalog
from billing.domain.errors import StoreUnavailable
from billing.domain.ledger import LedgerEntry
from billing.domain.payment import PaymentSession, Refund
from billing.domain.payment_events import InboxEvent
from billing.ports import RefundParams, RefundSnapshot, UnitOfWork
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent
from billing.use_cases.create_checkout import CreateCheckout, CreateCheckoutCommand
from billing.use_cases.refund_payment import RefundCommand, RefundPayment, RefundResult
from tests.blocking import blocking

from .stripe_events import CheckoutEvents, unique


def committed_by_group(apply_event: ApplyPaymentEvent, metrics: Metrics) -> ApplyEvent:
    """What the service gives the webhook app: the use case behind group commit."""
    return GroupCommit(apply_event.apply_all, asyncio.to_thread, metrics).apply


# -- running an app ---------------------------------------------------------------------------
class RunningApp:
    """An aiohttp app served on a loopback port by a background thread with its own loop;
    through `guard` (the public port's connection limits) when one is given."""

    def __init__(self, app: web.Application, guard: ConnectionGuard | None = None) -> None:
        self._app = app
        self._guard = guard
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="aiohttp-test-server")
        self._failure: BaseException | None = None
        self.port = 0

    def __enter__(self) -> RunningApp:
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise RuntimeError("the test server did not start") from self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        # Every test has its answers before it stops the server; a short shutdown only cuts the
        # lingering read aiohttp keeps up (10 s) on a connection whose body it refused (413).
        guard = self._guard
        runner = (guard.runner(self._app, shutdown_timeout=1.0) if guard is not None
                  else web.AppRunner(self._app, shutdown_timeout=1.0))
        try:
            self._loop.run_until_complete(runner.setup())
            site = (guard.site(runner, "127.0.0.1", 0) if guard is not None
                    else web.TCPSite(runner, "127.0.0.1", 0))
            self._loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as failure:
            self._failure = failure
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        connection.request(method, path, body=body, headers=headers or {},
                           encode_chunked=chunked)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


# -- the service, over in-memory ports --------------------------------------------------------
class SwitchableStore:
    """The in-memory store behind a switch: while `down`, every commit fails as a lost database
    would (the unit's work is thrown away), and `units_opened` counts who touched it."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.down = False
        self._lock = threading.Lock()
        self.units_opened = 0

    def __call__(self, *, read_only: bool = False, snapshot: bool = False) -> UnitOfWork:
        with self._lock:
            self.units_opened += 1
        return cast(UnitOfWork, _SwitchedUnit(self, read_only or snapshot))


class _SwitchedUnit(InMemoryUnitOfWork):
    def __init__(self, switch: SwitchableStore, read_only: bool) -> None:
        super().__init__(switch.store, read_only=read_only)
        self._switch = switch

    def commit(self) -> None:
        if self._switch.down:
            raise StoreUnavailable("the database cannot be reached")
        super().commit()


class ReportingGateway(InMemoryPaymentGateway):
    """Stripe in memory; `after_refund` runs once Stripe made a refund, before the call returns
    (where Stripe's webhook may overtake the response)."""

    after_refund: Callable[[RefundParams, RefundSnapshot], None] | None = None

    async def refund(self, params: RefundParams) -> RefundSnapshot:
        snapshot = await super().refund(params)
        if self.after_refund is not None:
            self.after_refund(params, snapshot)
        return snapshot


@dataclass
class Service:
    """The use cases the webhook drives, over a switchable in-memory store."""

    store: InMemoryStore = field(default_factory=InMemoryStore)
    gateway: ReportingGateway = field(default_factory=ReportingGateway)
    clock: ManualClock = field(default_factory=ManualClock)
    notifier: RecordingNotifier = field(default_factory=RecordingNotifier)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.database = SwitchableStore(self.store)
        self.units = UnitRunner(self.database, self.clock, self.notifier)
        self.apply_event = ApplyPaymentEvent(self.units)
        self.create_checkout = blocking(CreateCheckout(self.units, self.gateway,
                                                       default_catalog()))
        self.refund_payment = blocking(RefundPayment(self.units, self.gateway))

    def checkout(self, user_id: str, package_id: str = "coins_1000") -> CheckoutEvents:
        """A new Checkout Session, and the events Stripe would send about it."""
        created = self.create_checkout(
            CreateCheckoutCommand(
                user_id=user_id,
                package_id=package_id,
                success_url="https://game.example/ok?session_id={CHECKOUT_SESSION_ID}",
                cancel_url="https://game.example/cancel",
                request_id=unique("req"),
            )
        )
        session = self.session(created.session_id)
        return CheckoutEvents.for_session(
            created.session_id, created.payment_id, user_id, session.amount.amount_minor,
            session.amount.currency, int(self.clock.now().timestamp()),
        )

    def refund(self, user_id: str, session_id: str) -> RefundResult:
        return self.refund_payment(
            RefundCommand(user_id=user_id, session_id=session_id, reason="changed mind",
                          request_id=unique("refund"))
        )

    # -- what the store holds ---------------------------------------------------------------
    def session(self, session_id: str) -> PaymentSession:
        with self.store(read_only=True) as unit:
            session = unit.payments.by_stripe_session(session_id)
        assert session is not None
        return session

    def balance(self, user_id: str) -> int:
        account = self.store.state.accounts.get(user_id)
        return account.balance if account else 0

    def ledger(self, user_id: str = "") -> list[LedgerEntry]:
        return [e for e in self.store.state.ledger.values() if not user_id or e.user_id == user_id]

    def inbox(self) -> dict[str, InboxEvent]:
        return dict(self.store.state.inbox)

    def refunds(self) -> list[Refund]:
        return list(self.store.state.refunds.values())

    def assert_consistent(self) -> None:
        """Rule 5: every balance is the sum of its ledger rows, each row's balance_after the
        running sum, never below zero; rule 4: one purchase credit per session."""
        by_user: dict[str, list[LedgerEntry]] = {}
        for entry in self.store.state.ledger.values():
            by_user.setdefault(entry.user_id, []).append(entry)
        for user_id in set(by_user) | set(self.store.state.accounts):
            entries = sorted(by_user.get(user_id, []), key=lambda e: e.seq)
            running = 0
            for entry in entries:
                running += entry.coins
                assert entry.balance_after == running >= 0, entry
            assert self.balance(user_id) == running, user_id
        purchases = [e.payment_id for e in self.store.state.ledger.values()
                     if e.type.value == "PURCHASE"]
        assert len(purchases) == len(set(purchases))


def kinds(entries: Iterable[LedgerEntry]) -> list[tuple[str, int]]:
    """Ledger rows as (type, signed coins), in the order they were written."""
    return [(entry.type.value, entry.coins) for entry in entries]
