"""translate_event: Stripe's event JSON into PaymentEvent, field by field and type by type."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from billing.adapters.stripe_gateway.events import translate_event
from billing.domain.money import Money
from billing.domain.payment_events import EventKind

from .stripe_events import CheckoutEvents, event

CREATED = 1_767_268_800
EVENTS = CheckoutEvents.for_session("cs_test_a1", "pay_0001", "alice", 9999, "usd", CREATED)
USD = Money("USD", 9999)


def example(kind: EventKind) -> dict[str, Any]:
    """A realistic event of each handled type."""
    family = kind.value.rsplit(".", 1)
    match kind:
        case EventKind.CHECKOUT_COMPLETED:
            return EVENTS.completed()
        case EventKind.CHECKOUT_ASYNC_SUCCEEDED:
            return EVENTS.async_succeeded()
        case EventKind.CHECKOUT_ASYNC_FAILED:
            return EVENTS.async_failed()
        case EventKind.CHECKOUT_EXPIRED:
            return EVENTS.expired()
        case EventKind.PAYMENT_INTENT_SUCCEEDED | EventKind.PAYMENT_INTENT_FAILED:
            return EVENTS.payment_intent(kind.value)
        case EventKind.REFUND_CREATED | EventKind.REFUND_UPDATED | EventKind.REFUND_FAILED:
            return EVENTS.refund(family[1], refund_id="re_1", refund_key="rfk_1")
        case EventKind.CHARGE_REFUNDED:
            return EVENTS.charge_refunded(9999)
        case EventKind.DISPUTE_CREATED | EventKind.DISPUTE_CLOSED:
            return EVENTS.dispute(family[1], dispute_id="dp_1")
    raise AssertionError(kind)


def test_a_checkout_completion_is_read_from_the_session_object():
    document = EVENTS.completed()
    translated = translate_event(document, "the raw body")
    assert translated.event_id == document["id"]
    assert translated.type == "checkout.session.completed"
    assert translated.kind is EventKind.CHECKOUT_COMPLETED
    assert translated.created == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert translated.payload == "the raw body"
    assert (translated.stripe_session_id, translated.payment_id, translated.payment_intent_id,
            translated.payment_status, translated.amount) == (
        "cs_test_a1", "pay_0001", EVENTS.payment_intent_id, "paid", USD)
    assert not translated.malformed


def test_an_expired_session_without_a_payment_intent_reads_as_none():
    translated = translate_event(EVENTS.expired())
    assert translated.payment_intent_id == "" and translated.payment_status == "unpaid"


def test_a_payment_intent_event_is_read_from_the_intent():
    translated = translate_event(EVENTS.payment_intent("payment_intent.payment_failed"))
    assert (translated.payment_intent_id, translated.payment_id, translated.amount) == (
        EVENTS.payment_intent_id, "pay_0001", USD)


def test_a_refund_event_carries_our_refund_key_and_stripes_status():
    translated = translate_event(
        EVENTS.refund("updated", refund_id="re_9", refund_key="rfk_7", status="pending",
                      amount=500)
    )
    assert (translated.refund_id, translated.refund_key, translated.refund_status,
            translated.payment_intent_id, translated.amount) == (
        "re_9", "rfk_7", "pending", EVENTS.payment_intent_id, Money("USD", 500))


def test_a_refund_made_in_the_dashboard_has_no_refund_key():
    translated = translate_event(EVENTS.refund("created", refund_id="re_9"))
    assert translated.refund_key == "" and translated.refund_id == "re_9"


def test_charge_refunded_carries_the_running_total():
    translated = translate_event(EVENTS.charge_refunded(2500))
    assert (translated.amount_refunded, translated.amount, translated.payment_intent_id) == (
        2500, USD, EVENTS.payment_intent_id)


def test_a_dispute_event_is_read_from_the_dispute():
    translated = translate_event(EVENTS.dispute("closed", dispute_id="dp_3", status="won"))
    assert (translated.dispute_id, translated.dispute_status, translated.payment_intent_id,
            translated.amount) == ("dp_3", "won", EVENTS.payment_intent_id, USD)


def test_an_expanded_payment_intent_is_read_by_its_id():
    document = EVENTS.completed()
    document["data"]["object"]["payment_intent"] = {"id": "pi_expanded", "object": "payment_intent"}
    assert translate_event(document).payment_intent_id == "pi_expanded"


@pytest.mark.parametrize("currency", ["jpy", "kwd", "EUR"])
def test_currencies_are_upper_cased_with_their_amount_in_minor_units(currency):
    document = EVENTS.completed(currency=currency, amount_total=1000)
    assert translate_event(document).amount == Money(currency.upper(), 1000)


def test_an_unknown_type_keeps_only_the_envelope():
    translated = translate_event(event("customer.created", {"id": "cus_1"}, created=CREATED))
    assert translated.kind is None and translated.type == "customer.created"
    assert not translated.malformed and not translated.stripe_session_id


def test_an_unknown_type_needs_no_data_object():
    document = {"id": "evt_1", "type": "invoice.paid", "created": CREATED}
    assert translate_event(document).kind is None


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_handled_type_is_read_without_complaint(kind):
    translated = translate_event(example(kind))
    assert translated.kind is kind and not translated.malformed
    assert translated.amount is not None


def _without(document: dict[str, Any], *path: str) -> dict[str, Any]:
    broken = copy.deepcopy(document)
    target = broken
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return broken


def _with(document: dict[str, Any], value: object, *path: str) -> dict[str, Any]:
    broken = copy.deepcopy(document)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return broken


COMPLETED = EVENTS.completed()
REFUND = EVENTS.refund("created", refund_id="re_1", refund_key="rfk_1")
DISPUTE = EVENTS.dispute("created", dispute_id="dp_1")
CHARGE = EVENTS.charge_refunded(100)
INTENT = EVENTS.payment_intent()


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        (_without(COMPLETED, "data"), "data.object"),
        (_with(COMPLETED, [], "data", "object"), "data.object"),
        (_with(COMPLETED, "payment_intent", "data", "object", "object"), "not a"),
        (_without(COMPLETED, "data", "object", "id"), "id"),
        (_without(COMPLETED, "data", "object", "amount_total"), "amount_total"),
        (_with(COMPLETED, None, "data", "object", "amount_total"), "amount_total"),
        (_with(COMPLETED, "9999", "data", "object", "amount_total"), "amount_total"),
        (_with(COMPLETED, 99.99, "data", "object", "amount_total"), "amount_total"),
        (_with(COMPLETED, True, "data", "object", "amount_total"), "amount_total"),
        (_with(COMPLETED, -1, "data", "object", "amount_total"), "amount_total"),
        (_without(COMPLETED, "data", "object", "currency"), "currency"),
        (_with(COMPLETED, "xyz", "data", "object", "currency"), "currency"),
        (_with(COMPLETED, 840, "data", "object", "currency"), "currency"),
        (_without(COMPLETED, "data", "object", "payment_status"), "payment_status"),
        (_with(COMPLETED, ["paid"], "data", "object", "payment_status"), "payment_status"),
        (_with(COMPLETED, "pay_1", "data", "object", "metadata"), "metadata"),
        (_with(COMPLETED, 7, "data", "object", "metadata", "payment_id"), "payment_id"),
        (_with(COMPLETED, 12, "data", "object", "payment_intent"), "payment_intent"),
        (_with(COMPLETED, {"object": "x"}, "data", "object", "payment_intent"), "id"),
        (_with(COMPLETED, "yesterday", "created"), "created"),
        (_without(COMPLETED, "created"), "created"),
        (_without(REFUND, "data", "object", "status"), "status"),
        (_without(REFUND, "data", "object", "amount"), "amount"),
        (_with(REFUND, 5, "data", "object", "metadata", "refund_key"), "refund_key"),
        (_without(DISPUTE, "data", "object", "id"), "id"),
        (_without(DISPUTE, "data", "object", "status"), "status"),
        (_without(CHARGE, "data", "object", "amount_refunded"), "amount_refunded"),
        (_without(INTENT, "data", "object", "amount"), "amount"),
    ],
)
def test_a_handled_type_whose_object_cannot_be_read_is_marked_malformed(document, complaint):
    translated = translate_event(document)
    assert translated.event_id == document["id"]
    assert complaint in translated.malformed


def test_missing_metadata_is_no_complaint():
    translated = translate_event(_without(COMPLETED, "data", "object", "metadata"))
    assert not translated.malformed and translated.payment_id == ""


@pytest.mark.parametrize(
    "document",
    [
        [],
        "evt_1",
        _without(COMPLETED, "id"),
        _with(COMPLETED, "", "id"),
        _with(COMPLETED, 17, "id"),
        _with(COMPLETED, "evt\n1", "id"),
        _with(COMPLETED, "e" * 256, "id"),
        _without(COMPLETED, "type"),
        _with(COMPLETED, None, "type"),
        _with(COMPLETED, ["checkout.session.completed"], "type"),
        _with(COMPLETED, "t" * 129, "type"),
    ],
)
def test_an_envelope_without_a_usable_id_or_type_is_refused(document):
    with pytest.raises(ValueError):
        translate_event(document)
