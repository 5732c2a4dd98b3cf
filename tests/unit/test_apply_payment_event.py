from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime

import pytest

from billing.adapters.memory import InMemoryStore
from billing.adapters.memory.unit_of_work import InMemoryUnitOfWork
from billing.domain.errors import StoreUnavailable
from billing.domain.events import LatePaymentCredited, PaymentEventRejected
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus
from billing.domain.payment_events import InboxEvent, InboxOutcome, PaymentEvent
from tests.unit.world import World, checkout_event, paid

COMPLETED, PENDING = PaymentStatus.COMPLETED, PaymentStatus.PENDING


def outcome(world: World, event_id: str) -> InboxOutcome:
    return world.store.state.inbox[event_id].outcome


def test_a_paid_completion_credits_the_packages_coins_once(world):
    created = world.checkout("alice")
    event = paid(world, created)
    assert world.deliver(event).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200
    assert world.session(created.session_id).status is COMPLETED
    [entry] = world.ledger()
    assert (entry.type.value, entry.coins, entry.balance_after, entry.session_id) == (
        "PURCHASE",
        1200,
        1200,
        created.session_id,
    )
    assert entry.request_id == event.event_id and entry.caller == "stripe"


def test_a_duplicate_delivery_answers_duplicate_and_changes_nothing(world):
    created = world.checkout("alice")
    event = paid(world, created)
    world.deliver(event)
    again = world.deliver(event)
    assert again.duplicate and again.outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200 and len(world.ledger()) == 1
    assert world.store.state.inbox[event.event_id].attempts == 1


def test_two_distinct_events_for_one_payment_credit_once(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.deliver(checkout_event(world, "async_payment_succeeded", created))
    assert world.balance("alice") == 1200
    world.assert_invariants()


def test_an_unpaid_completion_waits_for_the_async_result(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created, payment_status="unpaid"))
    assert world.session(created.session_id).status is PENDING
    assert world.balance("alice") == 0
    world.deliver(checkout_event(world, "async_payment_succeeded", created))
    assert world.session(created.session_id).status is COMPLETED
    assert world.balance("alice") == 1200


def test_a_failed_async_payment_fails_the_session_without_coins(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created, payment_status="unpaid"))
    world.deliver(checkout_event(world, "async_payment_failed", created))
    assert world.session(created.session_id).status is PaymentStatus.FAILED
    assert world.balance("alice") == 0


def test_expiry_ends_a_pending_session(world):
    created = world.checkout("alice")
    world.deliver(checkout_event(world, "expired", created, payment_status="unpaid"))
    assert world.session(created.session_id).status is PaymentStatus.EXPIRED


@pytest.mark.parametrize("ending", ["expired", "async_payment_failed"])
def test_money_taken_after_an_unpaid_ending_is_still_credited_with_an_alert(world, ending):
    created = world.checkout("alice")
    world.deliver(checkout_event(world, ending, created, payment_status="unpaid"))
    world.deliver(paid(world, created))
    assert world.session(created.session_id).status is COMPLETED
    assert world.balance("alice") == 1200
    alerts = [e for e in world.notifier.published if isinstance(e, LatePaymentCredited)]
    assert len(alerts) == 1 and alerts[0].previous.value in ("EXPIRED", "FAILED")


def test_a_late_expiry_never_moves_a_paid_session_backwards(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.deliver(checkout_event(world, "expired", created, payment_status="unpaid"))
    world.deliver(checkout_event(world, "async_payment_failed", created))
    assert world.session(created.session_id).status is COMPLETED
    assert world.balance("alice") == 1200


def test_events_match_by_payment_id_before_the_session_id_was_stored(world):
    created = world.checkout("alice")
    event = paid(world, created, by_payment_id=True)
    payment = world.store.state.payments[created.payment_id]
    payment.stripe_session_id = ""  # crashed before storing Stripe's answer
    world.deliver(event)
    assert world.balance("alice") == 1200


def test_an_event_for_an_unknown_session_is_unmatched_and_retried_later(world):
    event = PaymentEvent(
        event_id="evt_x",
        type="checkout.session.completed",
        created=world.clock.now(),
        stripe_session_id="cs_unknown",
        payment_status="paid",
        amount=Money("USD", 9999),
    )
    assert world.deliver(event).outcome is InboxOutcome.UNMATCHED
    again = world.deliver(event)
    assert again.outcome is InboxOutcome.UNMATCHED and not again.duplicate
    assert world.store.state.inbox["evt_x"].attempts == 2


@pytest.mark.parametrize("amount", [Money("USD", 100), Money("EUR", 9999)])
def test_an_amount_or_currency_mismatch_is_rejected_not_credited(world, amount):
    created = world.checkout("alice")
    event = paid(world, created, amount=amount)
    result = world.deliver(event)
    assert result.outcome is InboxOutcome.REJECTED and "does not match" in result.error
    assert world.balance("alice") == 0
    assert world.session(created.session_id).status is PENDING
    assert any(isinstance(e, PaymentEventRejected) for e in world.notifier.published)
    assert world.deliver(event).duplicate


def test_a_malformed_object_is_rejected(world):
    event = PaymentEvent(
        event_id="evt_m",
        type="checkout.session.completed",
        created=world.clock.now(),
        malformed="amount_total is missing",
    )
    assert world.deliver(event).outcome is InboxOutcome.REJECTED


def test_unknown_types_are_ignored(world):
    event = PaymentEvent(event_id="evt_i", type="customer.created", created=world.clock.now())
    assert world.deliver(event).outcome is InboxOutcome.IGNORED


def test_payment_intent_events_are_recorded_and_cross_checked_only(world):
    created = world.checkout("alice")
    event = PaymentEvent(
        event_id="evt_pi",
        type="payment_intent.succeeded",
        created=world.clock.now(),
        payment_id=created.payment_id,
        payment_intent_id="pi_1",
        amount=Money("USD", 9999),
    )
    assert world.deliver(event).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 0
    wrong = PaymentEvent(
        event_id="evt_pi2",
        type="payment_intent.payment_failed",
        created=world.clock.now(),
        payment_id=created.payment_id,
        amount=Money("USD", 1),
    )
    assert world.deliver(wrong).outcome is InboxOutcome.REJECTED


def test_charge_refunded_is_recorded_and_never_debits(world):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    event = PaymentEvent(
        event_id="evt_ch",
        type="charge.refunded",
        created=world.clock.now(),
        payment_intent_id=f"pi_{created.payment_id}",
        amount_refunded=9999,
        amount=Money("USD", 9999),
    )
    assert world.deliver(event).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200
    too_much = PaymentEvent(
        event_id="evt_ch2",
        type="charge.refunded",
        created=world.clock.now(),
        payment_intent_id=f"pi_{created.payment_id}",
        amount_refunded=10_000,
        amount=Money("USD", 9999),
    )
    assert world.deliver(too_much).outcome is InboxOutcome.REJECTED


def test_replay_reapplies_a_stored_event_idempotently(world):
    created = world.checkout("alice")
    event = paid(world, created)
    world.deliver(event)
    result = world.apply_event(event, replay=True)
    assert result.outcome is InboxOutcome.APPLIED and not result.duplicate
    assert world.balance("alice") == 1200
    assert world.store.state.inbox[event.event_id].attempts == 2


CHECKOUT_KINDS = [
    ("completed", "paid"),
    ("completed", "unpaid"),
    ("async_payment_succeeded", "paid"),
    ("async_payment_failed", "unpaid"),
    ("expired", "unpaid"),
]
FINAL = {
    frozenset({"completed/paid"}): COMPLETED,
    frozenset({"async_payment_succeeded/paid"}): COMPLETED,
    frozenset({"async_payment_failed/unpaid"}): PaymentStatus.FAILED,
    frozenset({"expired/unpaid"}): PaymentStatus.EXPIRED,
    frozenset({"completed/unpaid"}): PENDING,
}


def _expected(pair: tuple[str, str]) -> PaymentStatus:
    names = [f"{kind}/{status}" for kind, status in pair]
    if any(name.endswith("/paid") for name in names):
        return COMPLETED  # money taken means coins given, whatever came first
    endings = [FINAL[frozenset({name})] for name in names if FINAL[frozenset({name})] != PENDING]
    return endings[0] if endings else PENDING  # the first unpaid ending wins; never backwards


@pytest.mark.parametrize(
    "pair", list(itertools.product(CHECKOUT_KINDS, repeat=2)), ids=lambda p: str(p)
)
def test_every_ordered_pair_of_checkout_events_ends_consistently(world, pair):
    created = world.checkout("alice")
    for kind, status in pair:
        world.deliver(checkout_event(world, kind, created, payment_status=status))
    expected = _expected(pair)
    assert world.session(created.session_id).status is expected
    assert world.balance("alice") == (1200 if expected is COMPLETED else 0)
    world.assert_invariants()


def test_event_times_are_kept_on_the_inbox_row(world):
    created = world.checkout("alice")
    event = paid(world, created)
    world.deliver(event)
    row = world.store.state.inbox[event.event_id]
    assert isinstance(row.received_at, datetime) and row.processed_at == row.received_at
    assert row.type == "checkout.session.completed"


def test_our_payment_id_on_another_checkout_session_is_rejected(world):
    created = world.checkout("alice")
    event = paid(world, created)
    forged = replace(event, stripe_session_id="cs_other")
    assert world.deliver(forged).outcome is InboxOutcome.REJECTED
    assert world.balance("alice") == 0


def test_a_payment_intent_event_teaches_us_the_intent_id(world):
    created = world.checkout("alice")
    event = PaymentEvent(
        event_id="evt_pi",
        type="payment_intent.succeeded",
        created=world.clock.now(),
        payment_id=created.payment_id,
        payment_intent_id="pi_early",
        amount=Money("USD", 9999),
    )
    world.deliver(event)
    assert world.session(created.session_id).payment_intent_id == "pi_early"


def test_a_redelivered_parked_event_is_tried_again(world):
    event = PaymentEvent(
        event_id="evt_p",
        type="checkout.session.completed",
        created=world.clock.now(),
        stripe_session_id="cs_unknown",
        payment_status="paid",
        amount=Money("USD", 9999),
    )
    for _ in range(10):
        world.deliver(event)
    assert world.store.state.inbox["evt_p"].outcome is InboxOutcome.PARKED
    assert not world.deliver(event).duplicate


# -- several events in one unit (group commit) ----------------------------------------------------
class CountingStore(InMemoryStore):
    """The in-memory store, counting units; recording the event `refused` fails as a full disk
    would."""

    def __init__(self) -> None:
        super().__init__()
        self.units_opened = 0
        self.refused = ""

    def __call__(self, *, read_only: bool = False, snapshot: bool = False) -> InMemoryUnitOfWork:
        self.units_opened += 1
        return RefusingUnit(self, read_only=read_only or snapshot)


class RefusingUnit(InMemoryUnitOfWork):
    def __enter__(self) -> RefusingUnit:
        super().__enter__()
        record, refused = self.inbox.add, self._store.refused  # type: ignore[attr-defined]

        def add(event: InboxEvent) -> None:
            if event.event_id == refused:
                raise StoreUnavailable("the disk is full")
            record(event)

        self.inbox.add = add  # type: ignore[method-assign]
        return self


def test_events_applied_together_answer_as_if_applied_one_by_one():
    world = World(store=CountingStore())
    alice, bob = world.checkout("alice"), world.checkout("bob", "coins_100")
    alice_paid, bob_paid = paid(world, alice), paid(world, bob)
    events = [bob_paid, alice_paid, alice_paid, checkout_event(world, "expired", bob)]
    units = world.store.units_opened

    results = world.apply_event.apply_all(events)

    assert world.store.units_opened == units + 1  # one transaction for all four
    assert [(r.outcome, r.duplicate) for r in results] == [
        (InboxOutcome.APPLIED, False), (InboxOutcome.APPLIED, False),
        (InboxOutcome.APPLIED, True), (InboxOutcome.APPLIED, False)]
    assert (world.balance("alice"), world.balance("bob")) == (1200, 100)
    assert world.session(bob.session_id).status is COMPLETED  # the late expiry changed nothing
    world.assert_invariants()


def test_an_event_that_fails_the_batch_is_answered_alone_and_the_others_apply():
    world = World(store=CountingStore())
    alice, bob = world.checkout("alice"), world.checkout("bob")
    refused, good = paid(world, bob), paid(world, alice)
    world.store.refused = refused.event_id

    results = world.apply_event.apply_all([refused, good])

    assert isinstance(results[0], StoreUnavailable)  # its own answer: 503, Stripe retries
    assert results[1].outcome is InboxOutcome.APPLIED
    assert (world.balance("alice"), world.balance("bob")) == (1200, 0)
    assert refused.event_id not in world.store.state.inbox
    world.assert_invariants()
