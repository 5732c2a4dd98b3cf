"""A world of use cases over the in-memory adapters, and builders for provider events."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from billing.adapters.memory import (
    InMemoryPaymentGateway,
    InMemoryStore,
    ManualClock,
    RecordingNotifier,
)
from billing.domain.catalog import default_catalog
from billing.domain.ledger import LedgerEntry
from billing.domain.money import Money
from billing.domain.payment import PaymentSession
from billing.domain.payment_events import PaymentEvent
from billing.use_cases._unit import UnitRunner
from billing.use_cases.apply_payment_event import ApplyPaymentEvent, EventApplied
from billing.use_cases.audit import Audit
from billing.use_cases.cancel_checkout import CancelCheckout
from billing.use_cases.create_checkout import (
    CheckoutCreated,
    CreateCheckout,
    CreateCheckoutCommand,
)
from billing.use_cases.get_balance import GetBalance
from billing.use_cases.get_payment_status import GetPaymentStatus
from billing.use_cases.grant_coins import GrantCoins
from billing.use_cases.inbox_events import ListInboxEvents, ReplayInboxEvent
from billing.use_cases.list_transactions import ListTransactions
from billing.use_cases.reconcile import Reconcile
from billing.use_cases.refund_payment import RefundCommand, RefundPayment, RefundResult
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins
from tests.blocking import blocking

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


class EventsByPayload:
    """Implements PaymentEventParser for events this test delivered (payload = event id)."""

    def __init__(self) -> None:
        self.known: dict[str, PaymentEvent] = {}

    def parse(self, payload: str) -> PaymentEvent:
        return self.known[payload]


@dataclass
class World:
    store: InMemoryStore = field(default_factory=InMemoryStore)
    gateway: InMemoryPaymentGateway = field(default_factory=InMemoryPaymentGateway)
    clock: ManualClock = field(default_factory=ManualClock)
    notifier: RecordingNotifier = field(default_factory=RecordingNotifier)

    def __post_init__(self) -> None:
        self.units = UnitRunner(self.store, self.clock, self.notifier)
        self.catalog = default_catalog()
        # The use cases that wait on the provider are async; the tests call them like the rest.
        self.create_checkout = blocking(CreateCheckout(self.units, self.gateway, self.catalog))
        self.apply_event = ApplyPaymentEvent(self.units)
        self.cancel = blocking(CancelCheckout(self.units, self.gateway))
        self.refund_payment = blocking(RefundPayment(self.units, self.gateway))
        self.get_balance = GetBalance(self.units)
        self.status = GetPaymentStatus(self.units)
        self.spend_coins = SpendCoins(self.units, max_coins=1_000_000)
        self.grant_coins = GrantCoins(self.units, max_coins=1_000_000)
        self.list_transactions = ListTransactions(self.units)
        self.parser = EventsByPayload()
        self.reconcile = blocking(
            Reconcile(self.units, self.gateway, self.parser, self.apply_event))
        self.audit = Audit(self.units)
        self.inbox = ListInboxEvents(self.units)
        self.replay = ReplayInboxEvent(self.units, self.parser, self.apply_event)

    # -- callers ----------------------------------------------------------------------------
    def checkout(
        self, user_id: str = "alice", package_id: str = "coins_1000", request_id: str = ""
    ) -> CheckoutCreated:
        return self.create_checkout(
            CreateCheckoutCommand(
                user_id=user_id,
                package_id=package_id,
                success_url="https://game.example/ok?session_id={CHECKOUT_SESSION_ID}",
                cancel_url="https://game.example/cancel",
                request_id=request_id or unique("req"),
            )
        )

    def spend(self, user_id: str, coins: int, key: str = "", reason: str = "sword") -> LedgerEntry:
        return self.spend_coins(
            CoinsCommand(
                user_id=user_id, coins=coins, reason=reason, idempotency_key=key or unique("spend")
            )
        )

    def grant(self, user_id: str, coins: int, key: str = "", reason: str = "gift") -> LedgerEntry:
        return self.grant_coins(
            CoinsCommand(
                user_id=user_id, coins=coins, reason=reason, idempotency_key=key or unique("grant")
            )
        )

    def refund(self, user_id: str, session_id: str, request_id: str = "") -> RefundResult:
        return self.refund_payment(
            RefundCommand(
                user_id=user_id,
                session_id=session_id,
                reason="changed mind",
                request_id=request_id or unique("refund"),
            )
        )

    def deliver(self, event: PaymentEvent) -> EventApplied:
        self.parser.known[event.payload or event.event_id] = event
        return self.apply_event(replace(event, payload=event.payload or event.event_id))

    # -- what the store holds ---------------------------------------------------------------
    def session(self, session_id: str) -> PaymentSession:
        with self.store(read_only=True) as unit:
            session = unit.payments.by_stripe_session(session_id)
        assert session is not None
        return session

    def ledger(self) -> list[LedgerEntry]:
        return list(self.store.state.ledger.values())

    def balance(self, user_id: str) -> int:
        return self.get_balance(user_id)

    def assert_invariants(self) -> None:
        """Rule 4 and 5: balance == sum of ledger rows, never negative, each credit once."""
        state = self.store.state
        totals: dict[str, int] = {}
        for entry in state.ledger.values():
            totals[entry.user_id] = totals.get(entry.user_id, 0) + entry.coins
        for user_id, account in state.accounts.items():
            assert account.balance >= 0
            assert account.balance == totals.get(user_id, 0), user_id
        purchases = [e.payment_id for e in state.ledger.values() if e.type.value == "PURCHASE"]
        assert len(purchases) == len(set(purchases))
        for session in state.payments.values():
            credited = f"purchase:{session.payment_id}" in state.ledger
            assert credited == session.is_credited
        by_user: dict[str, list[LedgerEntry]] = {}
        for entry in state.ledger.values():
            by_user.setdefault(entry.user_id, []).append(entry)
        for entries in by_user.values():
            running = 0
            for entry in sorted(entries, key=lambda e: e.seq):
                running += entry.coins
                assert entry.balance_after == running


# -- provider events, as the Stripe adapter translates them ---------------------------------
def checkout_event(
    world: World,
    kind: str,
    created: CheckoutCreated,
    *,
    payment_status: str = "paid",
    amount: Money | None = None,
    event_id: str = "",
    by_payment_id: bool = False,
) -> PaymentEvent:
    session = world.session(created.session_id)
    return PaymentEvent(
        event_id=event_id or unique("evt"),
        type=f"checkout.session.{kind}",
        created=world.clock.now(),
        stripe_session_id="" if by_payment_id else created.session_id,
        payment_id=created.payment_id,
        payment_intent_id=f"pi_{created.payment_id}",
        payment_status=payment_status,
        amount=amount or session.amount,
    )


def paid(world: World, created: CheckoutCreated, **kwargs: object) -> PaymentEvent:
    return checkout_event(world, "completed", created, **kwargs)  # type: ignore[arg-type]


def refund_event(
    world: World,
    created: CheckoutCreated,
    kind: str,
    *,
    refund_id: str,
    refund_key: str = "",
    status: str = "succeeded",
    amount: Money | None = None,
    event_id: str = "",
) -> PaymentEvent:
    session = world.session(created.session_id)
    return PaymentEvent(
        event_id=event_id or unique("evt"),
        type=f"refund.{kind}",
        created=world.clock.now(),
        payment_intent_id=f"pi_{created.payment_id}",
        payment_id=created.payment_id,
        refund_id=refund_id,
        refund_key=refund_key,
        refund_status=status,
        amount=amount or session.amount,
    )


def dispute_event(
    world: World, created: CheckoutCreated, kind: str, dispute_id: str, status: str = ""
) -> PaymentEvent:
    session = world.session(created.session_id)
    return PaymentEvent(
        event_id=unique("evt"),
        type=f"charge.dispute.{kind}",
        created=world.clock.now(),
        payment_intent_id=f"pi_{created.payment_id}",
        dispute_id=dispute_id,
        dispute_status=status or ("needs_response" if kind == "created" else "lost"),
        amount=session.amount,
    )
