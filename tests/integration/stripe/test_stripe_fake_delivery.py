"""How the fake delivers (drops, re-sends, restarts) and what its CLI helpers do."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from stripe_harness import (
    SECRET,
    FakeStripeServer,
    Receiver,
    checkout_params,
    free_port,
    poll_until,
    signature_is_valid,
)

from billing.adapters.stripe_gateway import StripePaymentGateway
from billing.devtools.stripe_fake import (
    TRIGGERS,
    FakeStripeConfig,
    FakeStripeError,
    fake_action,
    trigger_event,
)
from billing.devtools.stripe_fake.client import FakeAction
from billing.devtools.stripe_fake.engine import FakeStripe
from billing.devtools.stripe_fake.errors import StripeApiError
from billing.devtools.stripe_fake.forms import parse_form
from billing.devtools.stripe_fake.store import FakeStripeStore
from billing.devtools.stripe_fake.webhooks import signature_header


def pending_webhooks(fake: FakeStripeServer) -> list[int]:
    events = fake.api("GET", "/v1/events", {"limit": "100"}).json()["data"]
    return [event["pending_webhooks"] for event in events]


# -- delivery -------------------------------------------------------------------------------
def test_dropped_deliveries_are_listed_as_undelivered(
    start_fake: Callable[..., FakeStripeServer], receiver: Receiver
) -> None:
    fake = start_fake(drop_rate=1.0)
    gateway = fake.gateway()
    session = gateway.create_checkout(checkout_params())
    fake_action(fake.api_base, "pay", session.session_id)

    # Given up on (pending_webhooks 0) without ever being delivered.
    poll_until(lambda: pending_webhooks(fake) == [0, 0], what="the fake to drop both events")
    assert receiver.deliveries == []
    undelivered = gateway.undelivered_events()
    assert [e.type for e in undelivered] == ["payment_intent.succeeded",
                                             "checkout.session.completed"]
    assert undelivered[1].stripe_session_id == session.session_id

    resent = fake.http_post_dev(f"/_fake/events/{undelivered[1].event_id}/resend")
    assert resent["event"]["type"] == "checkout.session.completed"
    (completed,) = receiver.wait_for_types("checkout.session.completed")
    assert completed.event["id"] == undelivered[1].event_id


def test_an_event_refused_with_500_is_sent_again(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    receiver.answers.extend([500, 503])
    params = checkout_params()
    session = gateway.create_checkout(params)
    gateway.expire_checkout(session.session_id, params.payment_id)

    deliveries = receiver.wait_for(lambda got: any(d.answered == 200 for d in got))

    assert [d.answered for d in deliveries] == [500, 503, 200]
    assert len({d.event["id"] for d in deliveries}) == 1
    assert all(d.signature_ok for d in deliveries)
    poll_until(lambda: not gateway.undelivered_events(), what="the delivery to be recorded")


def test_events_wait_while_the_receiver_is_unreachable_and_go_out_after_a_restart(
    start_fake: Callable[..., FakeStripeServer], receiver: Receiver, tmp_path: Path
) -> None:
    state = str(tmp_path / "shared.db")
    down = start_fake(state_path=state, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    params = checkout_params()
    session = down.gateway().create_checkout(params)
    down.gateway().expire_checkout(session.session_id, params.payment_id)
    assert [e.type for e in down.gateway().undelivered_events()] == ["checkout.session.expired"]
    down.stop()

    start_fake(state_path=state)  # now pointing at the receiver

    (expired,) = receiver.wait_for_types("checkout.session.expired")
    assert expired.object["id"] == session.session_id


def test_state_survives_a_restart(
    start_fake: Callable[..., FakeStripeServer], receiver: Receiver, tmp_path: Path
) -> None:
    state = str(tmp_path / "shared.db")
    before = start_fake(state_path=state)
    params = checkout_params()
    created = before.gateway().create_checkout(params)
    before.stop()

    after = start_fake(state_path=state)  # another port, the same state file
    gateway = after.gateway()

    assert gateway.create_checkout(params).session_id == created.session_id  # key replayed
    reopened = gateway.retrieve_checkout(created.session_id)
    assert reopened.url == f"{after.api_base}/c/pay/{created.session_id}"
    assert after.page(created.session_id, method="card",
                      card_number="4242424242424242").status == 200
    receiver.wait_for_types("payment_intent.succeeded", "checkout.session.completed")


def test_signatures_follow_stripes_scheme() -> None:
    payload = b'{"id": "evt_1"}'
    old = signature_header(payload, SECRET, 1_700_000_000)
    fresh = signature_header(payload, SECRET, int(time.time()))

    assert old.startswith("t=1700000000,v1=")
    assert not signature_is_valid(payload, old, SECRET)  # older than 5 minutes
    assert signature_is_valid(payload, fresh, SECRET)
    assert not signature_is_valid(payload + b" ", fresh, SECRET)
    assert not signature_is_valid(payload, fresh, "whsec_other")


def test_events_are_signed_with_the_first_of_several_secrets(
    start_fake: Callable[..., FakeStripeServer], receiver: Receiver
) -> None:
    fake = start_fake(webhook_secret=f"{SECRET},whsec_rotated_next")
    params = checkout_params()
    session = fake.gateway().create_checkout(params)
    fake.gateway().expire_checkout(session.session_id, params.payment_id)

    (expired,) = receiver.wait_for_types("checkout.session.expired")  # verified with SECRET
    assert expired.signature_ok


# -- CLI helpers ----------------------------------------------------------------------------
def test_cli_actions_drive_a_session_through_its_life(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    session_id = gateway.create_checkout(checkout_params()).session_id

    declined = fake_action(fake.api_base, "decline", session_id)
    paid = fake_action(fake.api_base, "pay", session_id)
    refunded = fake_action(fake.api_base, "refund", session_id)

    assert [e["type"] for e in declined["events"]] == ["payment_intent.payment_failed"]
    assert declined["session"]["status"] == "open"
    assert [e["type"] for e in paid["events"]] == ["payment_intent.succeeded",
                                                  "checkout.session.completed"]
    assert paid["session"]["payment_status"] == "paid"
    assert [e["type"] for e in refunded["events"]] == ["refund.created", "charge.refunded"]
    assert refunded["object"]["metadata"] == {}  # a dashboard refund: no refund_key
    receiver.wait_for(lambda got: len(got) == 5)


def test_cli_dispute_and_expire(fake: FakeStripeServer, gateway: StripePaymentGateway) -> None:
    paid = gateway.create_checkout(checkout_params()).session_id
    fake_action(fake.api_base, "pay", paid)
    open_one = gateway.create_checkout(checkout_params()).session_id

    disputed = fake_action(fake.api_base, "dispute", paid)
    expired = fake_action(fake.api_base, "expire", open_one)

    assert [e["type"] for e in disputed["events"]] == ["charge.dispute.created"]
    assert disputed["object"]["status"] == "needs_response"
    assert [e["type"] for e in expired["events"]] == ["checkout.session.expired"]
    assert expired["session"]["status"] == "expired"


def test_cli_errors_say_why(fake: FakeStripeServer, gateway: StripePaymentGateway) -> None:
    session_id = gateway.create_checkout(checkout_params()).session_id

    with pytest.raises(FakeStripeError, match="has not been paid") as unpaid:
        fake_action(fake.api_base, "refund", session_id)
    assert unpaid.value.status == 400
    with pytest.raises(FakeStripeError, match="No such checkout.session") as unknown:
        fake_action(fake.api_base, "pay", "cs_test_nope")
    assert unknown.value.status == 404
    with pytest.raises(FakeStripeError, match="cannot reach") as unreachable:
        fake_action(f"http://127.0.0.1:{free_port()}", "pay", session_id)
    assert unreachable.value.status is None
    with pytest.raises(FakeStripeError, match="supported"):
        trigger_event(fake.api_base, "customer.created", session_id)


@pytest.mark.parametrize(("event_type", "setup", "expected"), [
    ("checkout.session.completed", [], ["payment_intent.succeeded",
                                        "checkout.session.completed"]),
    ("payment_intent.payment_failed", [], ["payment_intent.payment_failed"]),
    ("checkout.session.expired", [], ["checkout.session.expired"]),
    ("checkout.session.async_payment_succeeded", [], [
        "checkout.session.completed", "payment_intent.succeeded",
        "checkout.session.async_payment_succeeded"]),
    ("checkout.session.async_payment_failed", [], [
        "checkout.session.completed", "payment_intent.payment_failed",
        "checkout.session.async_payment_failed"]),
    ("charge.refunded", ["pay"], ["refund.created", "charge.refunded"]),
    ("refund.failed", ["pay"], ["refund.created", "charge.refunded", "refund.updated",
                                "refund.failed"]),
    ("charge.dispute.created", ["pay"], ["charge.dispute.created"]),
    ("charge.dispute.closed", ["pay", "dispute"], ["charge.dispute.closed"]),
])
def test_trigger_makes_stripe_send_the_event(
    fake: FakeStripeServer, gateway: StripePaymentGateway, event_type: str,
    setup: list[FakeAction],
    expected: list[str],
) -> None:
    session_id = gateway.create_checkout(checkout_params()).session_id
    for action in setup:
        fake_action(fake.api_base, action, session_id)

    answer = trigger_event(fake.api_base, event_type, session_id)

    assert [e["type"] for e in answer["events"]] == expected
    assert event_type in TRIGGERS


# -- the engine on its own: the clock, and Stripe's form encoding -----------------------------
def test_a_session_past_expires_at_expires_by_itself(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = FakeStripeStore(str(tmp_path / "clock.db"))
    engine = FakeStripe(store, FakeStripeConfig(str(tmp_path / "clock.db"), "", SECRET),
                        clock=lambda: now[0])
    with store.transaction():
        session = engine.create_session(parse_form([
            ("mode", "payment"), ("success_url", "https://app.example/ok"),
            ("expires_at", str(int(now[0]) + 1800)),
            ("line_items[0][price_data][currency]", "JPY"),
            ("line_items[0][price_data][unit_amount]", "500"),
            ("line_items[0][price_data][product_data][name]", "coins"),
            ("line_items[0][quantity]", "2"),
        ]))
    assert (session["currency"], session["amount_total"]) == ("jpy", 1000)

    with store.transaction():
        assert engine.run_due_timers() == 0
    now[0] += 1800
    with store.transaction():
        assert engine.run_due_timers() == 1

    assert engine.session(session["id"])["status"] == "expired"
    (event,) = store.events_after(0)
    assert event.type == "checkout.session.expired"
    assert json.loads(event.payload)["data"]["object"]["url"] is None
    store.close()


def test_bracket_keys_become_nested_objects_and_lists() -> None:
    parsed = parse_form([
        ("line_items[0][price_data][unit_amount]", "999"), ("line_items[0][quantity]", "1"),
        ("line_items[1][quantity]", "2"), ("metadata[user_id]", "u1"), ("metadata[note]", ""),
        ("expand[]", "a"), ("expand[]", "b"), ("mode", "payment"),
    ])

    assert parsed == {
        "line_items": [{"price_data": {"unit_amount": "999"}, "quantity": "1"},
                       {"quantity": "2"}],
        "metadata": {"user_id": "u1", "note": ""},
        "expand": ["a", "b"],
        "mode": "payment",
    }
    with pytest.raises(StripeApiError, match="Invalid array"):
        parse_form([("items[0]", "a"), ("items[x]", "b")])
