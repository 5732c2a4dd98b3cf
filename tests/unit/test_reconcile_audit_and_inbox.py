from dataclasses import replace
from datetime import timedelta

import pytest

from billing.domain.errors import EventNotFound, GatewayUnavailable
from billing.domain.ledger import Account
from billing.domain.payment import PaymentStatus, RefundStatus
from billing.domain.payment_events import InboxOutcome
from tests.unit.world import World, dispute_event, paid

LATER = timedelta(minutes=16)


def test_a_paid_session_whose_webhook_was_lost_is_credited_by_reconciliation(world: World):
    created = world.checkout("alice")
    world.gateway.pay(created.session_id)
    assert world.reconcile().total == 0  # too young: the webhook may still come
    world.clock.advance(LATER)
    report = world.reconcile()
    assert report.fixes["credited"] == 1 and world.balance("alice") == 1200
    assert world.session(created.session_id).status is PaymentStatus.COMPLETED
    world.deliver(paid(world, created))  # the webhook arrives after all
    assert world.balance("alice") == 1200
    assert world.reconcile().total == 0


def test_an_open_session_past_its_expiry_is_expired_on_stripe(world: World):
    created = world.checkout("alice")
    world.clock.advance(timedelta(hours=2))
    assert world.reconcile().fixes["expired"] == 1
    assert world.gateway.sessions[created.session_id].snapshot.status == "expired"
    assert world.session(created.session_id).status is PaymentStatus.EXPIRED


def test_an_open_session_not_yet_expired_is_left_alone(world: World):
    created = world.checkout("alice")
    world.clock.advance(LATER)
    assert world.reconcile().total == 0
    assert world.session(created.session_id).status is PaymentStatus.PENDING


def test_a_session_stripe_never_created_is_expired_locally(world: World):
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.checkout("alice", request_id="r1")
    world.clock.advance(LATER)
    assert world.reconcile().fixes["expired_locally"] == 1
    [payment] = world.store.state.payments.values()
    assert payment.status is PaymentStatus.EXPIRED


def test_a_refund_stripe_never_got_is_finished_with_the_same_key(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.refund("alice", created.session_id)
    assert world.reconcile().fixes["refund_succeeded"] == 1
    [refund] = world.store.state.refunds.values()
    assert refund.status is RefundStatus.SUCCEEDED and world.gateway.refund_count() == 1
    assert world.reconcile().total == 0 and world.gateway.refund_count() == 1


def test_a_pending_refund_that_failed_on_stripe_is_reversed(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.gateway.fail_refunds = True
    world.refund("alice", created.session_id)
    [refund] = world.store.state.refunds.values()
    world.gateway.settle_refund(refund.stripe_refund_id, "failed")
    assert world.reconcile().fixes["refund_reversed"] == 1
    assert world.balance("alice") == 1200
    assert world.session(created.session_id).status is PaymentStatus.COMPLETED


def test_a_refund_stripe_refuses_on_retry_is_reversed(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.gateway.unavailable_calls = 1
    with pytest.raises(GatewayUnavailable):
        world.refund("alice", created.session_id)
    world.gateway.refuse_refunds = True
    assert world.reconcile().fixes["refund_reversed"] == 1
    assert world.balance("alice") == 1200


def test_undelivered_events_are_applied(world: World):
    created = world.checkout("alice")
    world.gateway.undelivered.append(replace(paid(world, created), payload="p1"))
    assert world.reconcile().fixes["event_applied"] == 1
    assert world.balance("alice") == 1200
    assert world.reconcile().fixes["event_applied"] == 0


def test_unmatched_events_are_retried_with_backoff_then_parked(world: World):
    created = world.checkout("alice")
    early = dispute_event(world, created, "closed", "dp_1", status="won")
    world.deliver(early)
    row = world.store.state.inbox[early.event_id]
    assert row.outcome is InboxOutcome.UNMATCHED and row.next_attempt_at is not None
    assert world.reconcile().fixes["unmatched_applied"] == 0
    assert world.store.state.inbox[early.event_id].attempts == 1  # not due yet
    for _ in range(12):
        world.clock.advance(timedelta(hours=1))
        world.reconcile()
    row = world.store.state.inbox[early.event_id]
    assert row.outcome is InboxOutcome.PARKED and row.attempts == 10
    assert "parked" in row.error
    assert [e.event_id for e in world.inbox(failed_only=True)] == [early.event_id]


def test_an_unmatched_event_applies_once_its_session_appears(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created, payment_status="unpaid"))
    early = dispute_event(world, created, "created", "dp_1")
    world.deliver(early)
    world.deliver(paid(world, created))
    world.clock.advance(timedelta(minutes=1))
    assert world.reconcile().fixes["unmatched_applied"] == 1
    assert world.balance("alice") == 0


def test_replay_reapplies_a_parked_event_by_id(world: World):
    created = world.checkout("alice")
    event = paid(world, created, amount=None)
    world.deliver(replace(event, amount=replace(event.amount, amount_minor=1)))
    assert world.store.state.inbox[event.event_id].outcome is InboxOutcome.REJECTED
    world.parser.known[event.event_id] = event  # e.g. the operator fixed the catalog
    assert world.replay(event.event_id).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200
    assert world.replay(event.event_id).outcome is InboxOutcome.APPLIED
    assert world.balance("alice") == 1200


def test_replay_of_an_unknown_event_is_a_typed_error(world: World):
    with pytest.raises(EventNotFound):
        world.replay("evt_missing")


def test_reconciliation_survives_stripe_being_down(world: World):
    created = world.checkout("alice")
    world.clock.advance(LATER)
    world.gateway.unavailable_calls = 100
    report = world.reconcile()
    assert report.total == 0 and report.errors
    assert world.session(created.session_id).status is PaymentStatus.PENDING


def test_the_audit_passes_on_a_consistent_store(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    world.spend("alice", 100)
    world.grant("bob", 5)
    report = world.audit()
    assert report.ok, report.violations
    assert (report.accounts, report.ledger_rows, report.sessions) == (2, 3, 1)


def test_the_audit_names_every_kind_of_violation(world: World):
    created = world.checkout("alice")
    world.deliver(paid(world, created))
    other = world.checkout("bob")
    world.grant("carol", 5)
    state = world.store.state
    state.accounts["alice"] = Account("alice", 1300)  # balance != ledger
    state.accounts["dave"] = Account("dave", -1)  # below zero
    first = next(iter(state.ledger.values()))
    state.ledger["forged"] = replace(first, key="forged", seq=99, balance_after=7)
    state.payments[other.payment_id].status = PaymentStatus.COMPLETED  # never credited
    del state.accounts["carol"]
    report = world.audit()
    text = "\n".join(report.violations)
    for needle in (
        "holds 1300",
        "below zero",
        "balance_after 7",
        "credited 2 times",
        "never credited",
        "no account",
    ):
        assert needle in text, text
    assert not report.ok
