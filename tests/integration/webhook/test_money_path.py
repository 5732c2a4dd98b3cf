"""Signed deliveries through the receiver into the real ApplyPaymentEvent (in-memory store):
duplicates, concurrency and reorderings credit and debit exactly once (rules 3-7)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from billing.adapters.stripe_gateway.events import translate_event
from billing.domain.events import LatePaymentCredited, PaymentEventRejected
from billing.domain.payment import PaymentStatus, RefundStatus
from billing.domain.payment_events import InboxOutcome
from billing.ports import RefundParams, RefundSnapshot
from billing.use_cases.spend_coins import CoinsCommand, SpendCoins

from .conftest import StripeSender
from .harness import Reply, Service, kinds
from .stripe_events import CheckoutEvents, encode, event, unique

COMPLETED, PENDING = PaymentStatus.COMPLETED, PaymentStatus.PENDING


def outcome(reply: Reply) -> str:
    assert reply.status == 200, reply.body
    return str(reply.json()["outcome"])


def test_a_paid_completion_credits_once_and_a_redelivery_is_a_duplicate(service, stripe):
    events = service.checkout("alice")
    document = events.completed()
    assert stripe.send(document).json() == {
        "received": True, "outcome": "applied", "duplicate": False}
    assert stripe.send(document).json() == {
        "received": True, "outcome": "applied", "duplicate": True}
    assert service.balance("alice") == 1200
    assert service.session(events.session_id).status is COMPLETED
    [entry] = service.ledger()
    assert (entry.type.value, entry.coins, entry.session_id, entry.request_id) == (
        "PURCHASE", 1200, events.session_id, document["id"])
    assert service.inbox()[document["id"]].payload == encode(document).decode()
    service.assert_consistent()


def test_twenty_concurrent_copies_of_one_event_credit_once(service, stripe):
    events = service.checkout("alice")
    document = events.completed()
    start = threading.Barrier(20)

    def deliver(_: int) -> Reply:
        start.wait()
        return stripe.send(document)

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(deliver, range(20)))
    assert {reply.status for reply in replies} == {200}
    assert sorted(reply.json()["duplicate"] for reply in replies) == [False] + [True] * 19
    assert service.balance("alice") == 1200 and len(service.ledger()) == 1
    assert len(service.inbox()) == 1
    service.assert_consistent()


def test_twenty_concurrent_distinct_events_for_one_payment_credit_once(service, stripe):
    events = service.checkout("alice")
    documents = [events.completed() if i % 2 else events.async_succeeded() for i in range(20)]
    start = threading.Barrier(20)

    def deliver(document: dict[str, Any]) -> str:
        start.wait()
        return outcome(stripe.send(document))

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(deliver, documents)) == {"applied"}
    assert service.balance("alice") == 1200 and len(service.inbox()) == 20
    service.assert_consistent()


def test_expired_before_a_paid_completion_still_credits_with_an_alert(service, stripe):
    events = service.checkout("alice")
    assert outcome(stripe.send(events.expired())) == "applied"
    assert service.session(events.session_id).status is PaymentStatus.EXPIRED
    assert outcome(stripe.send(events.completed())) == "applied"
    assert service.session(events.session_id).status is COMPLETED
    assert service.balance("alice") == 1200
    alerts = [e for e in service.notifier.published if isinstance(e, LatePaymentCredited)]
    assert [a.previous for a in alerts] == [PaymentStatus.EXPIRED]
    service.assert_consistent()


def test_an_expiry_after_the_payment_changes_nothing(service, stripe):
    events = service.checkout("alice")
    stripe.send(events.completed())
    assert outcome(stripe.send(events.expired())) == "applied"
    assert service.session(events.session_id).status is COMPLETED
    assert service.balance("alice") == 1200
    service.assert_consistent()


def test_async_success_before_the_unpaid_completion_credits_once(service, stripe):
    events = service.checkout("alice")
    assert outcome(stripe.send(events.async_succeeded())) == "applied"
    assert outcome(stripe.send(events.completed(payment_status="unpaid"))) == "applied"
    assert service.session(events.session_id).status is COMPLETED
    assert service.balance("alice") == 1200 and len(service.ledger()) == 1
    service.assert_consistent()


def test_the_delayed_path_in_order_credits_only_on_success(service, stripe):
    events = service.checkout("alice")
    stripe.send(events.completed(payment_status="unpaid"))
    assert service.session(events.session_id).status is PENDING and service.balance("alice") == 0
    stripe.send(events.async_succeeded())
    assert service.session(events.session_id).status is COMPLETED
    assert service.balance("alice") == 1200
    service.assert_consistent()


def test_an_async_failure_fails_the_session_in_either_order(service, stripe):
    first, second = service.checkout("alice"), service.checkout("bob")
    stripe.send(first.completed(payment_status="unpaid"))
    stripe.send(first.async_failed())
    stripe.send(second.async_failed())
    stripe.send(second.completed(payment_status="unpaid"))
    for events in (first, second):
        assert service.session(events.session_id).status is PaymentStatus.FAILED
    assert service.ledger() == []


def test_payment_intent_events_are_recorded_only(service, stripe):
    events = service.checkout("alice")
    assert outcome(stripe.send(events.payment_intent())) == "applied"  # before the completion
    assert service.balance("alice") == 0
    assert service.session(events.session_id).status is PENDING
    stripe.send(events.completed())
    assert outcome(stripe.send(events.payment_intent("payment_intent.payment_failed"))) == (
        "applied")
    assert service.balance("alice") == 1200
    service.assert_consistent()


# -- rejected, ignored, unmatched -------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount_total", "currency"), [(100, "usd"), (99990, "usd"), (9999, "eur"), (9999, "jpy")]
)
def test_an_amount_or_currency_mismatch_is_rejected_without_credit(
    service, stripe, amount_total, currency
):
    events = service.checkout("alice")
    document = events.completed(amount_total=amount_total, currency=currency)
    assert stripe.send(document).json() == {
        "received": True, "outcome": "rejected", "duplicate": False}
    assert service.balance("alice") == 0 and service.ledger() == []
    assert service.session(events.session_id).status is PENDING
    assert "does not match" in service.inbox()[document["id"]].error
    assert any(isinstance(e, PaymentEventRejected) for e in service.notifier.published)
    assert stripe.send(document).json()["duplicate"] is True


def test_an_upper_case_currency_from_stripe_still_matches(service, stripe):
    events = service.checkout("alice")
    assert outcome(stripe.send(events.completed(currency="USD"))) == "applied"
    assert service.balance("alice") == 1200


def test_an_unknown_event_type_is_recorded_as_ignored(service, stripe):
    document = event("customer.subscription.created", {"id": "sub_1"}, created=0)
    assert outcome(stripe.send(document)) == "ignored"
    assert service.inbox()[document["id"]].outcome is InboxOutcome.IGNORED
    assert service.ledger() == []


def test_an_event_for_a_session_we_do_not_know_is_unmatched(service, stripe):
    strangers = service.checkout("alice")
    document = strangers.completed()
    document["data"]["object"]["id"] = "cs_test_not_ours"
    document["data"]["object"]["metadata"] = {}
    assert outcome(stripe.send(document)) == "unmatched"
    assert service.inbox()[document["id"]].outcome is InboxOutcome.UNMATCHED
    assert service.ledger() == []


def test_an_event_is_matched_by_our_payment_id_when_its_session_id_is_new(service, stripe):
    """Rule 2: Stripe made the session but our row never got its cs_ id (a crash)."""
    events = service.checkout("alice")
    document = events.completed()
    with service.store() as unit:  # forget the cs_ id, as if the process died before storing it
        session = unit.payments.by_payment_id(events.payment_id)
        assert session is not None
        session.stripe_session_id = ""
        unit.payments.save(session)
        unit.commit()
    assert outcome(stripe.send(document)) == "applied"
    assert service.session(events.session_id).payment_id == events.payment_id
    assert service.balance("alice") == 1200


# -- refunds ----------------------------------------------------------------------------------
def paid(service: Service, stripe: StripeSender, user_id: str = "alice") -> CheckoutEvents:
    events = service.checkout(user_id)
    assert outcome(stripe.send(events.completed())) == "applied"
    return events


def test_refund_events_after_a_refund_debit_once(service, stripe):
    events = paid(service, stripe)
    result = service.refund("alice", events.session_id)
    assert (result.status, result.coins_debited, result.new_balance) == (
        PaymentStatus.REFUNDED, 1200, 0)
    [refund] = service.refunds()
    created = events.refund("created", refund_id=refund.stripe_refund_id,
                            refund_key=refund.refund_key)
    updated = events.refund("updated", refund_id=refund.stripe_refund_id,
                            refund_key=refund.refund_key)
    again = events.refund("created", refund_id=refund.stripe_refund_id,
                          refund_key=refund.refund_key)  # the same refund, another event id
    for document in (created, updated, created, again):
        assert outcome(stripe.send(document)) == "applied"
    assert kinds(service.ledger()) == [("PURCHASE", 1200), ("REFUND", -1200)]
    assert service.session(events.session_id).status is PaymentStatus.REFUNDED
    assert service.refunds()[0].status is RefundStatus.SUCCEEDED
    service.assert_consistent()


def test_refund_failed_after_refund_created_reverses_the_debit_once(service, stripe):
    events = paid(service, stripe)
    service.gateway.fail_refunds = True  # Stripe accepts the refund, then it fails
    service.refund("alice", events.session_id)
    [refund] = service.refunds()
    assert refund.status is RefundStatus.PENDING
    ids = {"refund_id": refund.stripe_refund_id, "refund_key": refund.refund_key}
    assert outcome(stripe.send(events.refund("created", status="pending", **ids))) == "applied"
    assert service.balance("alice") == 0
    failed = events.refund("failed", status="failed", **ids)
    assert outcome(stripe.send(failed)) == "applied"
    assert outcome(stripe.send(events.refund("failed", status="failed", **ids))) == "applied"
    assert stripe.send(failed).json()["duplicate"] is True
    assert outcome(stripe.send(events.refund("updated", status="pending", **ids))) == "applied"
    assert kinds(service.ledger()) == [
        ("PURCHASE", 1200), ("REFUND", -1200), ("REFUND_REVERSAL", 1200)]
    assert service.session(events.session_id).status is COMPLETED
    assert service.refunds()[0].status is RefundStatus.FAILED
    service.assert_consistent()


def test_refund_failed_before_refund_created_reverses_once(service, stripe):
    events = paid(service, stripe)
    service.gateway.fail_refunds = True
    service.refund("alice", events.session_id)
    [refund] = service.refunds()
    ids = {"refund_id": refund.stripe_refund_id, "refund_key": refund.refund_key}
    stripe.send(events.refund("failed", status="failed", **ids))
    stripe.send(events.refund("created", status="pending", **ids))
    stripe.send(events.refund("updated", status="succeeded", **ids))  # a stale snapshot
    assert kinds(service.ledger()) == [
        ("PURCHASE", 1200), ("REFUND", -1200), ("REFUND_REVERSAL", 1200)]
    assert service.balance("alice") == 1200
    service.assert_consistent()


def test_a_refund_event_that_overtakes_the_refund_call_debits_once(service, stripe):
    events = paid(service, stripe)
    overtaking: list[Reply] = []

    def webhook_first(params: RefundParams, snapshot: RefundSnapshot) -> None:
        document = events.refund("created", refund_id=snapshot.refund_id,
                                 refund_key=params.refund_key, status=snapshot.status)
        overtaking.append(stripe.send(document))

    service.gateway.after_refund = webhook_first
    result = service.refund("alice", events.session_id)
    assert [outcome(reply) for reply in overtaking] == ["applied"]
    assert (result.status, result.coins_debited, result.new_balance) == (
        PaymentStatus.REFUNDED, 1200, 0)
    assert kinds(service.ledger()) == [("PURCHASE", 1200), ("REFUND", -1200)]
    [refund] = service.refunds()
    assert refund.status is RefundStatus.SUCCEEDED and refund.stripe_refund_id
    service.assert_consistent()


def test_a_refund_made_in_the_dashboard_is_debited_once_by_its_re_id(service, stripe):
    events = paid(service, stripe)
    created = events.refund("created", refund_id="re_dashboard_1", amount=events.amount_minor)
    assert outcome(stripe.send(created)) == "applied"
    assert outcome(stripe.send(events.refund("updated", refund_id="re_dashboard_1"))) == (
        "applied")
    assert kinds(service.ledger()) == [("PURCHASE", 1200), ("REFUND", -1200)]
    assert service.session(events.session_id).status is PaymentStatus.REFUNDED
    service.assert_consistent()


def test_a_partial_dashboard_refund_is_debited_in_proportion(service, stripe):
    events = paid(service, stripe)
    half = events.amount_minor // 2  # 49.99 of 99.99 USD
    stripe.send(events.refund("created", refund_id="re_half", amount=half))
    assert kinds(service.ledger()) == [("PURCHASE", 1200), ("REFUND", -599)]
    assert service.session(events.session_id).status is COMPLETED
    service.assert_consistent()


def test_a_dashboard_refund_that_failed_before_its_created_event_arrives_debits_nothing(
    service, stripe
):
    events = paid(service, stripe)
    stripe.send(events.refund("failed", refund_id="re_dashboard_2", status="failed"))
    stripe.send(events.refund("created", refund_id="re_dashboard_2", status="pending"))
    assert service.balance("alice") == 1200
    assert kinds(service.ledger()) == [("PURCHASE", 1200)]


def test_charge_refunded_is_recorded_and_never_debits(service, stripe):
    events = paid(service, stripe)
    assert outcome(stripe.send(events.charge_refunded(events.amount_minor))) == "applied"
    assert kinds(service.ledger()) == [("PURCHASE", 1200)]
    assert service.session(events.session_id).status is COMPLETED
    too_much = events.charge_refunded(events.amount_minor + 1)
    assert outcome(stripe.send(too_much)) == "rejected"
    service.assert_consistent()


# -- disputes ---------------------------------------------------------------------------------
def test_a_dispute_before_the_completion_is_unmatched_then_debits_once_when_replayed(
    service, stripe
):
    events = service.checkout("alice")
    dispute = events.dispute("created", dispute_id="dp_1")
    assert outcome(stripe.send(dispute)) == "unmatched"
    assert service.ledger() == []
    assert outcome(stripe.send(events.completed())) == "applied"

    payload = encode(dispute).decode()
    # What reconciliation does with the stored unmatched event, then an operator's replay.
    assert service.apply_event(translate_event(json.loads(payload), payload)).outcome is (
        InboxOutcome.APPLIED)
    assert service.apply_event(translate_event(dispute, payload), replay=True).outcome is (
        InboxOutcome.APPLIED)
    assert stripe.send(dispute).json()["duplicate"] is True
    assert kinds(service.ledger()) == [("PURCHASE", 1200), ("DISPUTE", -1200)]
    assert service.session(events.session_id).status is PaymentStatus.DISPUTED
    assert service.inbox()[dispute["id"]].attempts == 3
    service.assert_consistent()


def test_a_won_dispute_gives_the_coins_back_once(service, stripe):
    events = paid(service, stripe)
    stripe.send(events.dispute("created", dispute_id="dp_2"))
    won = events.dispute("closed", dispute_id="dp_2", status="won")
    assert outcome(stripe.send(won)) == "applied"
    assert outcome(stripe.send(events.dispute("closed", dispute_id="dp_2", status="won"))) == (
        "applied")
    assert kinds(service.ledger()) == [
        ("PURCHASE", 1200), ("DISPUTE", -1200), ("DISPUTE_REVERSAL", 1200)]
    assert service.session(events.session_id).status is COMPLETED
    service.assert_consistent()


def test_a_dispute_of_spent_coins_takes_what_is_left_and_records_the_shortfall(service, stripe):
    events = paid(service, stripe)
    SpendCoins(service.units)(
        CoinsCommand(user_id="alice", coins=1000, reason="sword", idempotency_key=unique("spend"))
    )
    stripe.send(events.dispute("created", dispute_id="dp_3"))
    dispute_row = service.ledger()[-1]
    assert (dispute_row.coins, dispute_row.shortfall, service.balance("alice")) == (-200, 1000, 0)
    service.assert_consistent()
