"""Stripe event JSON → PaymentEvent: the one place Stripe's event shapes are read.

Only the fields the apply-payment-event use case needs are taken, each checked for its type.
A known event type whose object cannot be read becomes a PaymentEvent with `malformed` set (the
use case records it `rejected`, replayable once understood); only an envelope without a usable
id or type is refused outright (ValueError: the receiver answers 400 and stores nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from billing.domain.money import Money, is_supported
from billing.domain.payment_events import EventKind, PaymentEvent, event_kind

# Stripe's event ids are ~30 characters and its types ~40; the inbox holds 255 and 128.
_MAX_LENGTH = {"id": 255, "type": 128}
_EPOCH = datetime.fromtimestamp(0, UTC)


class _Malformed(Exception):
    """The event's object lacks a field the use case needs, or has one of the wrong type."""


def translate_event(event: Mapping[str, Any], payload: str = "") -> PaymentEvent:
    """Read a Stripe event (already verified and parsed from `payload`) into our terms."""
    if not isinstance(event, Mapping):
        raise ValueError("the event is not a JSON object")
    event_id = _envelope_field(event, "id")
    event_type = _envelope_field(event, "type")
    created, created_problem = _created(event.get("created"))
    kind = event_kind(event_type)
    if kind is None:
        return PaymentEvent(event_id=event_id, type=event_type, created=created, payload=payload)
    object_type, read = _READERS[kind]
    try:
        if created_problem:
            raise _Malformed(created_problem)
        fields = read(_Object.of_event(event, object_type))
    except _Malformed as problem:
        return PaymentEvent(
            event_id=event_id, type=event_type, created=created, payload=payload,
            malformed=str(problem),
        )
    return PaymentEvent(
        event_id=event_id, type=event_type, created=created, payload=payload, **fields
    )


def _envelope_field(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"the event has no {name}")
    if len(value) > _MAX_LENGTH[name] or not (value.isascii() and value.isprintable()):
        raise ValueError(f"the event's {name} is not a Stripe {name}")
    return value


def _created(value: object) -> tuple[datetime, str]:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC), ""
        except (OverflowError, OSError, ValueError):
            pass
    return _EPOCH, "created is not a unix timestamp"


# -- reading one data.object ------------------------------------------------------------------
class _Object:
    """A Stripe object with typed accessors that raise _Malformed naming the field."""

    def __init__(self, values: Mapping[str, Any], where: str) -> None:
        self._values = values
        self._where = where

    @classmethod
    def of_event(cls, event: Mapping[str, Any], object_type: str) -> _Object:
        data = event.get("data")
        values = data.get("object") if isinstance(data, Mapping) else None
        if not isinstance(values, Mapping):
            raise _Malformed("data.object is missing or not an object")
        found = values.get("object", object_type)
        if found != object_type:
            raise _Malformed(f"data.object is a {found!r}, not a {object_type!r}")
        return cls(values, "data.object")

    def text(self, name: str, *, required: bool = False) -> str:
        value = self._values.get(name)
        if value is None or value == "":
            if required:
                raise _Malformed(f"{self._where}.{name} is missing")
            return ""
        if not isinstance(value, str):
            raise _Malformed(f"{self._where}.{name} is not a string")
        return value

    def count(self, name: str) -> int:
        value = self._values.get(name)
        if value is None:
            raise _Malformed(f"{self._where}.{name} is missing")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _Malformed(f"{self._where}.{name} is not a non-negative integer")
        return value

    def reference(self, name: str) -> str:
        """An id that Stripe may also send expanded, as the object itself (`{"id": ...}`)."""
        value = self._values.get(name)
        if isinstance(value, Mapping):
            return _Object(value, f"{self._where}.{name}").text("id", required=True)
        return self.text(name)

    def money(self, amount_field: str) -> Money:
        amount = self.count(amount_field)
        currency = self.text("currency", required=True).upper()
        if not is_supported(currency):
            raise _Malformed(f"{self._where}.currency {currency!r} is not a supported currency")
        return Money(currency, amount)

    def metadata(self, name: str) -> str:
        metadata = self._values.get("metadata")
        if metadata is None:
            return ""
        if not isinstance(metadata, Mapping):
            raise _Malformed(f"{self._where}.metadata is not an object")
        return _Object(metadata, f"{self._where}.metadata").text(name)


# -- one reader per family of event types -------------------------------------------------------
_Fields = dict[str, Any]


def _checkout_session(obj: _Object) -> _Fields:
    return {
        "stripe_session_id": obj.text("id", required=True),
        "payment_id": obj.metadata("payment_id"),
        "payment_intent_id": obj.reference("payment_intent"),
        "payment_status": obj.text("payment_status", required=True),
        "amount": obj.money("amount_total"),
    }


def _payment_intent(obj: _Object) -> _Fields:
    return {
        "payment_intent_id": obj.text("id", required=True),
        "payment_id": obj.metadata("payment_id"),
        "amount": obj.money("amount"),
    }


def _refund(obj: _Object) -> _Fields:
    return {
        "refund_id": obj.text("id", required=True),
        "refund_key": obj.metadata("refund_key"),
        "refund_status": obj.text("status", required=True),
        "payment_intent_id": obj.reference("payment_intent"),
        "payment_id": obj.metadata("payment_id"),
        "amount": obj.money("amount"),
    }


def _charge_refunded(obj: _Object) -> _Fields:
    return {
        "payment_intent_id": obj.reference("payment_intent"),
        "payment_id": obj.metadata("payment_id"),
        "amount_refunded": obj.count("amount_refunded"),
        "amount": obj.money("amount"),
    }


def _dispute(obj: _Object) -> _Fields:
    return {
        "dispute_id": obj.text("id", required=True),
        "dispute_status": obj.text("status", required=True),
        "payment_intent_id": obj.reference("payment_intent"),
        "payment_id": obj.metadata("payment_id"),
        "amount": obj.money("amount"),
    }


_CHECKOUT = ("checkout.session", _checkout_session)
_REFUND = ("refund", _refund)
_DISPUTE = ("dispute", _dispute)
_PAYMENT_INTENT = ("payment_intent", _payment_intent)
# Each handled type: the Stripe object type its data.object must be, and how to read it.
_READERS: dict[EventKind, tuple[str, Callable[[_Object], _Fields]]] = {
    EventKind.CHECKOUT_COMPLETED: _CHECKOUT,
    EventKind.CHECKOUT_ASYNC_SUCCEEDED: _CHECKOUT,
    EventKind.CHECKOUT_ASYNC_FAILED: _CHECKOUT,
    EventKind.CHECKOUT_EXPIRED: _CHECKOUT,
    EventKind.PAYMENT_INTENT_SUCCEEDED: _PAYMENT_INTENT,
    EventKind.PAYMENT_INTENT_FAILED: _PAYMENT_INTENT,
    EventKind.REFUND_CREATED: _REFUND,
    EventKind.REFUND_UPDATED: _REFUND,
    EventKind.REFUND_FAILED: _REFUND,
    EventKind.CHARGE_REFUNDED: ("charge", _charge_refunded),
    EventKind.DISPUTE_CREATED: _DISPUTE,
    EventKind.DISPUTE_CLOSED: _DISPUTE,
}
