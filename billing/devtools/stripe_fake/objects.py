"""Stripe-shaped objects and ids, and the checks Stripe applies to request parameters."""

from __future__ import annotations

import secrets
import string
from typing import Any

from billing.devtools.stripe_fake.errors import StripeApiError

# The version this fake's objects follow (stripe-python 16's pinned API version).
API_VERSION = "2026-10-28.endive"

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def event_object(event_id: str, event_type: str, created: int, obj: dict[str, Any],
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous:
        data["previous_attributes"] = previous
    return {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def checkout_session(
    session_id: str, *, created: int, amount: int, currency: str, expires_at: int,
    success_url: str, cancel_url: str | None, client_reference_id: str | None,
    customer_email: str | None, metadata: dict[str, str],
) -> dict[str, Any]:
    return {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "created": created,
        "currency": currency,
        "customer": None,
        "customer_details": None,
        "customer_email": customer_email,
        "expires_at": expires_at,
        "livemode": False,
        "locale": None,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "status": "open",
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,  # filled in when shown: the public URL may change between restarts
    }


def payment_intent(intent_id: str, *, created: int, amount: int, currency: str,
                   description: str | None, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": 0,
        "capture_method": "automatic_async",
        "created": created,
        "currency": currency,
        "customer": None,
        "description": description,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": metadata,
        "payment_method": None,
        "payment_method_types": ["card"],
        "status": "requires_payment_method",
    }


def charge(charge_id: str, *, created: int, intent: dict[str, Any], method: str,
           last4: str) -> dict[str, Any]:
    details: dict[str, Any] = {"type": method}
    if method == "card":
        details["card"] = {"brand": "visa", "last4": last4, "exp_month": 12, "exp_year": 2034}
    else:
        details[method] = {"bank_name": "STRIPE TEST BANK", "last4": last4}
    return {
        "id": charge_id,
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": intent["amount"],
        "amount_refunded": 0,
        "captured": True,
        "created": created,
        "currency": intent["currency"],
        "disputed": False,
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "paid": True,
        "payment_intent": intent["id"],
        "payment_method_details": details,
        "refunded": False,
        "status": "succeeded",
    }


def refund(refund_id: str, *, created: int, charge_obj: dict[str, Any], amount: int,
           reason: str | None, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": charge_obj["id"],
        "created": created,
        "currency": charge_obj["currency"],
        "failure_reason": None,
        "metadata": metadata,
        "payment_intent": charge_obj["payment_intent"],
        "reason": reason,
        "receipt_number": None,
        "status": "succeeded",
    }


def dispute(dispute_id: str, *, created: int, charge_obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": charge_obj["amount"],
        "charge": charge_obj["id"],
        "created": created,
        "currency": charge_obj["currency"],
        "evidence_details": {"due_by": created + 7 * 86400, "has_evidence": False,
                             "past_due": False, "submission_count": 0},
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": charge_obj["payment_intent"],
        "reason": "fraudulent",
        "status": "needs_response",
    }


# -- parameter checks, with Stripe's wording ------------------------------------------------
def refuse_unknown(params: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    for name in params:
        if name not in allowed:
            full = f"{where}[{name}]" if where else name
            raise StripeApiError(400, f"Received unknown parameter: {full}", param=full)


def required(params: dict[str, Any], name: str, where: str = "") -> Any:
    full = f"{where}[{name}]" if where else name
    value = params.get(name)
    if value is None or value == "":
        raise StripeApiError(400, f"Missing required param: {full}.", param=full,
                             code="parameter_missing")
    return value


def text(value: Any, param: str, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise StripeApiError(400, f"Invalid string: {param}", param=param)
    if len(value) > max_length:
        raise StripeApiError(
            400, f"Invalid string: {param}; must be at most {max_length} characters", param=param
        )
    return value


def integer(value: Any, param: str, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    if not isinstance(value, str) or not value.lstrip("-").isdigit():
        raise StripeApiError(400, f"Invalid integer: {value}", param=param)
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeApiError(
            400, f"This value must be greater than or equal to {minimum}.", param=param
        )
    if maximum is not None and number > maximum:
        raise StripeApiError(
            400, f"This value must be less than or equal to {maximum}.", param=param
        )
    return number


def mapping(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StripeApiError(400, f"Invalid object: {param}", param=param)
    return value


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """Stripe's limits: 50 keys of at most 40 characters, values of at most 500."""
    if value is None or value == "":
        return {}
    given = mapping(value, param)
    if len(given) > 50:
        raise StripeApiError(400, "You can specify up to 50 keys in metadata.", param=param)
    result: dict[str, str] = {}
    for key, item in given.items():
        if len(key) > 40:
            raise StripeApiError(400, f"Metadata keys must be at most 40 characters: {key}",
                                 param=f"{param}[{key}]")
        item = text(item, f"{param}[{key}]", max_length=500)
        if item:  # an empty value unsets the key
            result[key] = item
    return result


def currency(value: Any, param: str) -> str:
    code = text(value, param).lower()
    if len(code) != 3 or not code.isalpha():
        raise StripeApiError(400, f"Invalid currency: {value}", param=param)
    return code
