"""Any sequence of duplicated, reordered and interleaved events and calls keeps the invariants."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from billing.domain.errors import BillingError
from billing.domain.payment import PaymentStatus as S
from billing.domain.payment_events import PaymentEvent
from billing.use_cases.create_checkout import CheckoutCreated
from tests.unit.world import World, checkout_event, dispute_event, refund_event

ALLOWED = {
    S.PENDING: {S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED},
    S.FAILED: {S.COMPLETED},  # money taken after an unpaid ending is credited (rule 3)
    S.EXPIRED: {S.COMPLETED},
    S.CANCELLED: {S.COMPLETED},
    S.COMPLETED: {S.REFUNDED, S.DISPUTED},
    S.REFUNDED: {S.COMPLETED},  # the refund failed
    S.DISPUTED: {S.COMPLETED},  # the dispute was won
}
USERS = st.sampled_from(["alice", "bob", "carol"])
PACKAGES = st.sampled_from(["coins_100", "coins_500", "coins_1000"])
CHECKOUT = st.sampled_from(
    [
        ("completed", "paid"),
        ("completed", "unpaid"),
        ("async_payment_succeeded", "paid"),
        ("async_payment_failed", "unpaid"),
        ("expired", "unpaid"),
    ]
)


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.sessions: list[CheckoutCreated] = []
        self.sent: list[PaymentEvent] = []
        self.paid: set[str] = set()
        self.history: dict[str, S] = {}

    def _send(self, event: PaymentEvent) -> None:
        self.sent.append(event)
        self.world.deliver(event)

    @rule(user=USERS, package=PACKAGES)
    def checkout(self, user: str, package: str) -> None:
        created = self.world.checkout(user, package)
        self.sessions.append(created)
        self.history[created.session_id] = S.PENDING

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), what=CHECKOUT)
    def checkout_event(self, data: st.DataObject, what: tuple[str, str]) -> None:
        created = data.draw(st.sampled_from(self.sessions))
        kind, status = what
        if status == "paid":
            self.paid.add(created.payment_id)
        self._send(checkout_event(self.world, kind, created, payment_status=status))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.world.deliver(data.draw(st.sampled_from(self.sent)))

    @rule(user=USERS, coins=st.integers(1, 1500))
    def spend(self, user: str, coins: int) -> None:
        with contextlib.suppress(BillingError):
            self.world.spend(user, coins)

    @rule(user=USERS, coins=st.integers(1, 500), key=st.sampled_from(["a", "b", "c", ""]))
    def grant(self, user: str, coins: int, key: str) -> None:
        with contextlib.suppress(BillingError):  # same key, other parameters
            self.world.grant(user, coins, key=key)

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), outage=st.booleans())
    def refund(self, data: st.DataObject, outage: bool) -> None:
        created = data.draw(st.sampled_from(self.sessions))
        user = self.world.session(created.session_id).user_id
        self.world.gateway.unavailable_calls = int(outage)
        with contextlib.suppress(BillingError):
            self.world.refund(user, created.session_id, request_id=f"r-{created.payment_id}")
        self.world.gateway.unavailable_calls = 0

    @precondition(lambda self: self.world.store.state.refunds)
    @rule(data=st.data(), kind=st.sampled_from(["failed", "updated", "created"]))
    def refund_event(self, data: st.DataObject, kind: str) -> None:
        # In the order they were made (their keys are random: sorting by them would draw
        # another refund when Hypothesis replays the example).
        refund = data.draw(st.sampled_from(list(self.world.store.state.refunds.values())))
        created = next(c for c in self.sessions if c.payment_id == refund.payment_id)
        status = (
            "failed"
            if kind == "failed"
            else data.draw(st.sampled_from(["pending", "succeeded", "failed"]))
        )
        self._send(
            refund_event(
                self.world,
                created,
                kind,
                # Stripe's id when it answered, else one of its own (Stripe's ids are unique: a
                # shared stand-in would make two refunds one and every retry a conflict).
                refund_id=refund.stripe_refund_id or f"re_{refund.refund_key}",
                refund_key=refund.refund_key,
                status=status,
            )
        )

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), won=st.booleans())
    def dispute(self, data: st.DataObject, won: bool) -> None:
        created = data.draw(st.sampled_from(self.sessions))
        dispute_id = f"dp_{created.payment_id}"
        self._send(dispute_event(self.world, created, "created", dispute_id))
        if data.draw(st.booleans()):
            self._send(
                dispute_event(
                    self.world, created, "closed", dispute_id, status="won" if won else "lost"
                )
            )

    @invariant()
    def money_is_never_lost_doubled_or_negative(self) -> None:
        self.world.assert_invariants()

    @invariant()
    def every_paid_session_is_credited_exactly_once(self) -> None:
        for payment_id in self.paid:
            assert self.world.store.state.payments[payment_id].is_credited

    @invariant()
    def no_session_moves_backwards(self) -> None:
        for created in self.sessions:
            now = self.world.session(created.session_id).status
            before = self.history[created.session_id]
            if now is not before:
                assert now in ALLOWED[before], (before, now)
                self.history[created.session_id] = now


TestLedger = Ledger.TestCase
TestLedger.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
