"""The fake's checkout page, card by card: the right signed events, in Stripe's order."""

from __future__ import annotations

import pytest
from stripe_harness import FakeStripeServer, Receiver, checkout_params

from billing.adapters.stripe_gateway import StripePaymentGateway
from billing.domain.money import Money
from billing.ports import RefundParams


@pytest.fixture
def session_id(gateway: StripePaymentGateway) -> str:
    return gateway.create_checkout(checkout_params("pay_page")).session_id


def pay(fake: FakeStripeServer, session_id: str, card: str) -> int:
    return fake.page(session_id, method="card", card_number=card).status


def test_the_page_offers_a_card_number_and_a_bank_debit(
    fake: FakeStripeServer, session_id: str
) -> None:
    page = fake.page(session_id)

    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "100 coins" in page.text and "9.99 USD" in page.text
    assert "name=card_number" in page.text
    assert "value=bank_debit" in page.text
    assert f"action='/c/pay/{session_id}'" in page.text
    assert "https://app.example/cancelled" in page.text


def test_an_unknown_session_has_no_page(fake: FakeStripeServer) -> None:
    assert fake.page("cs_test_unknown").status == 404


def test_4242_pays(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver, session_id: str
) -> None:
    page = fake.page(session_id, method="card", card_number="4242 4242 4242 4242")

    assert page.status == 200 and "Payment succeeded" in page.text
    assert f"https://app.example/paid?session={session_id}" in page.text
    intent, completed = receiver.wait_for_types("payment_intent.succeeded",
                                                "checkout.session.completed")
    assert (intent.object["status"], intent.object["amount_received"]) == ("succeeded", 999)
    session = completed.object
    assert (session["id"], session["status"], session["payment_status"]) == (
        session_id, "complete", "paid")
    assert (session["amount_total"], session["currency"]) == (999, "usd")
    assert session["metadata"]["payment_id"] == "pay_page"
    assert session["payment_intent"] == intent.object["id"]
    assert completed.event["livemode"] is False and completed.event["object"] == "event"
    snapshot = gateway.retrieve_checkout(session_id)
    assert snapshot.is_paid and snapshot.payment_intent_id == intent.object["id"]
    assert pay(fake, session_id, "4242424242424242") == 409  # paid: nothing more to pay


def test_0002_is_declined_and_the_session_stays_open(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver, session_id: str
) -> None:
    page = fake.page(session_id, method="card", card_number="4000000000000002")

    assert page.status == 402 and "Your card was declined." in page.text
    (failed,) = receiver.wait_for_types("payment_intent.payment_failed")
    assert failed.object["last_payment_error"]["code"] == "card_declined"
    assert failed.object["status"] == "requires_payment_method"
    assert gateway.retrieve_checkout(session_id).status == "open"

    assert pay(fake, session_id, "4242424242424242") == 200  # the customer tries again
    _, succeeded, _ = receiver.wait_for_types(
        "payment_intent.payment_failed", "payment_intent.succeeded", "checkout.session.completed")
    assert succeeded.object["id"] == failed.object["id"]  # one PaymentIntent per session


def test_3184_pays_once_3d_secure_is_approved(
    fake: FakeStripeServer, receiver: Receiver, session_id: str
) -> None:
    challenge = fake.page(session_id, method="card", card_number="4000002760003184")
    assert challenge.status == 200 and "3-D Secure" in challenge.text
    assert "value=approve" in challenge.text and "value=fail" in challenge.text

    done = fake.page(session_id, "3ds", result="approve")

    assert done.status == 200 and "Payment succeeded" in done.text
    receiver.wait_for_types("payment_intent.succeeded", "checkout.session.completed")


def test_3184_is_declined_when_3d_secure_fails(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver, session_id: str
) -> None:
    fake.page(session_id, method="card", card_number="4000002760003184")

    failed_page = fake.page(session_id, "3ds", result="fail")

    assert failed_page.status == 402
    (failed,) = receiver.wait_for_types("payment_intent.payment_failed")
    assert failed.object["last_payment_error"]["code"] == "payment_intent_authentication_failure"
    assert gateway.retrieve_checkout(session_id).status == "open"
    assert fake.page(session_id, "3ds", result="approve").status == 409  # no longer waiting


def test_0259_pays_and_is_then_disputed(
    fake: FakeStripeServer, receiver: Receiver, session_id: str
) -> None:
    assert pay(fake, session_id, "4000000000000259") == 200

    intent, _, disputed = receiver.wait_for_types(
        "payment_intent.succeeded", "checkout.session.completed", "charge.dispute.created")
    dispute = disputed.object
    assert dispute["object"] == "dispute" and dispute["id"].startswith("dp_")
    assert dispute["payment_intent"] == intent.object["id"]
    assert dispute["charge"] == intent.object["latest_charge"]
    assert (dispute["amount"], dispute["currency"], dispute["status"]) == (
        999, "usd", "needs_response")


def test_5126_pays_and_its_refund_fails_later(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver, session_id: str
) -> None:
    assert pay(fake, session_id, "4000000000005126") == 200
    intent = gateway.retrieve_checkout(session_id).payment_intent_id

    refund = gateway.refund(RefundParams(
        refund_key="rk-5126", payment_id="pay_page", payment_intent_id=intent,
        amount=Money("USD", 999), reason="duplicate purchase"))

    assert refund.status == "succeeded"  # as in Stripe's test mode: it fails afterwards
    deliveries = receiver.wait_for_types(
        "payment_intent.succeeded", "checkout.session.completed", "refund.created",
        "charge.refunded", "refund.updated", "refund.failed")
    updated, failed = deliveries[4].object, deliveries[5].object
    assert failed["id"] == refund.refund_id
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert failed["metadata"]["refund_key"] == "rk-5126"
    assert deliveries[4].event["data"]["previous_attributes"]["status"] == "succeeded"
    assert updated["status"] == "failed"
    assert gateway.retrieve_refund(refund.refund_id).status == "failed"


@pytest.mark.parametrize(("outcome", "last_types", "payment_status"), [
    ("succeeded", ["payment_intent.succeeded", "checkout.session.async_payment_succeeded"],
     "paid"),
    ("failed", ["payment_intent.payment_failed", "checkout.session.async_payment_failed"],
     "unpaid"),
])
def test_a_bank_debit_completes_unpaid_then_settles(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver, session_id: str,
    outcome: str, last_types: list[str], payment_status: str,
) -> None:
    processing = fake.page(session_id, method="bank_debit")

    assert processing.status == 200 and "Bank debit processing" in processing.text
    (completed,) = receiver.wait_for_types("checkout.session.completed")
    assert (completed.object["status"], completed.object["payment_status"]) == (
        "complete", "unpaid")
    assert not gateway.retrieve_checkout(session_id).is_paid

    settled = fake.page(session_id, "bank-debit", outcome=outcome)

    assert settled.status == 200
    deliveries = receiver.wait_for_types("checkout.session.completed", *last_types)
    assert deliveries[-1].object["payment_status"] == payment_status
    assert gateway.retrieve_checkout(session_id).payment_status == payment_status


def test_a_number_that_is_not_a_test_card_is_refused(
    fake: FakeStripeServer, gateway: StripePaymentGateway, session_id: str
) -> None:
    page = fake.page(session_id, method="card", card_number="5555555555554444")

    assert page.status == 400 and "4242424242424242" in page.text
    assert gateway.retrieve_checkout(session_id).status == "open"


def test_an_expired_session_cannot_be_paid(
    fake: FakeStripeServer, gateway: StripePaymentGateway, session_id: str
) -> None:
    gateway.expire_checkout(session_id, "pay_page")

    assert "has expired" in fake.page(session_id).text
    assert pay(fake, session_id, "4242424242424242") == 409
