"""Stripe event JSON as Stripe sends it, and its signature, made independently of billing's code.

The shapes follow Stripe's API reference (Event, Checkout Session, PaymentIntent, Refund, Charge,
Dispute), trimmed to realistic fields; amounts in minor units, currencies in lower case.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from dataclasses import dataclass
from typing import Any

API_VERSION = "2025-06-30.basil"
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}_test_{next(_serial):08d}"


def stripe_signature(payload: bytes, secret: str, timestamp: int, *, scheme: str = "v1") -> str:
    """`Stripe-Signature` as Stripe computes it: HMAC-SHA256 over `"<t>." + payload`."""
    digest = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + payload, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},{scheme}={digest}"


def event(
    event_type: str, obj: dict[str, Any], *, created: int, event_id: str = ""
) -> dict[str, Any]:
    return {
        "id": event_id or unique("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def encode(document: dict[str, Any]) -> bytes:
    """Stripe's body: pretty-printed JSON (the signature covers these exact bytes)."""
    return json.dumps(document, indent=2).encode()


@dataclass(frozen=True)
class CheckoutEvents:
    """Events about one of our Checkout Sessions, as Stripe would report them."""

    session_id: str
    payment_id: str
    user_id: str
    amount_minor: int
    currency: str = "usd"
    payment_intent_id: str = ""
    charge_id: str = ""
    created: int = 1_767_268_800

    @classmethod
    def for_session(
        cls, session_id: str, payment_id: str, user_id: str, amount_minor: int, currency: str,
        created: int,
    ) -> CheckoutEvents:
        return cls(
            session_id=session_id, payment_id=payment_id, user_id=user_id,
            amount_minor=amount_minor, currency=currency.lower(),
            payment_intent_id=unique("pi"), charge_id=unique("ch"), created=created,
        )

    # -- checkout.session.* ------------------------------------------------------------------
    def checkout_session(
        self, *, status: str, payment_status: str, amount_total: int | None = None,
        currency: str | None = None,
    ) -> dict[str, Any]:
        amount = self.amount_minor if amount_total is None else amount_total
        return {
            "id": self.session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "client_reference_id": self.user_id,
            "created": self.created - 60,
            "currency": currency or self.currency,
            "customer": None,
            "expires_at": self.created + 3600,
            "livemode": False,
            "metadata": {
                "user_id": self.user_id,
                "coins": "1000",
                "bonus": "200",
                "total_coins": "1200",
                "package_id": "coins_1000",
                "payment_id": self.payment_id,
            },
            "mode": "payment",
            "payment_intent": None if status == "expired" else self.payment_intent_id,
            "payment_status": payment_status,
            "status": status,
            "success_url": "https://game.example/ok?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://game.example/cancel",
            "url": None,
        }

    def completed(
        self, *, payment_status: str = "paid", amount_total: int | None = None,
        currency: str | None = None,
    ) -> dict[str, Any]:
        obj = self.checkout_session(
            status="complete", payment_status=payment_status, amount_total=amount_total,
            currency=currency,
        )
        return event("checkout.session.completed", obj, created=self.created)

    def async_succeeded(self) -> dict[str, Any]:
        obj = self.checkout_session(status="complete", payment_status="paid")
        return event("checkout.session.async_payment_succeeded", obj, created=self.created)

    def async_failed(self) -> dict[str, Any]:
        obj = self.checkout_session(status="complete", payment_status="unpaid")
        return event("checkout.session.async_payment_failed", obj, created=self.created)

    def expired(self) -> dict[str, Any]:
        obj = self.checkout_session(status="expired", payment_status="unpaid")
        return event("checkout.session.expired", obj, created=self.created)

    # -- payment_intent.* --------------------------------------------------------------------
    def payment_intent(self, event_type: str = "payment_intent.succeeded") -> dict[str, Any]:
        obj = {
            "id": self.payment_intent_id,
            "object": "payment_intent",
            "amount": self.amount_minor,
            "amount_received": self.amount_minor,
            "currency": self.currency,
            "latest_charge": self.charge_id,
            "metadata": {"payment_id": self.payment_id},
            "status": "succeeded",
        }
        return event(event_type, obj, created=self.created)

    # -- refund.* and charge.refunded --------------------------------------------------------
    def refund(
        self, kind: str, *, refund_id: str, refund_key: str = "", status: str = "succeeded",
        amount: int | None = None, event_id: str = "",
    ) -> dict[str, Any]:
        obj = {
            "id": refund_id,
            "object": "refund",
            "amount": self.amount_minor if amount is None else amount,
            "charge": self.charge_id,
            "created": self.created,
            "currency": self.currency,
            "metadata": {"refund_key": refund_key, "reason": "changed mind"} if refund_key
            else {},
            "payment_intent": self.payment_intent_id,
            "reason": "requested_by_customer",
            "status": status,
        }
        return event(f"refund.{kind}", obj, created=self.created, event_id=event_id)

    def charge_refunded(self, amount_refunded: int) -> dict[str, Any]:
        obj = {
            "id": self.charge_id,
            "object": "charge",
            "amount": self.amount_minor,
            "amount_captured": self.amount_minor,
            "amount_refunded": amount_refunded,
            "currency": self.currency,
            "metadata": {"payment_id": self.payment_id},
            "paid": True,
            "payment_intent": self.payment_intent_id,
            "refunded": amount_refunded == self.amount_minor,
            "status": "succeeded",
        }
        return event("charge.refunded", obj, created=self.created)

    # -- charge.dispute.* --------------------------------------------------------------------
    def dispute(
        self, kind: str, *, dispute_id: str, status: str = "needs_response"
    ) -> dict[str, Any]:
        obj = {
            "id": dispute_id,
            "object": "dispute",
            "amount": self.amount_minor,
            "charge": self.charge_id,
            "created": self.created,
            "currency": self.currency,
            "metadata": {},
            "payment_intent": self.payment_intent_id,
            "reason": "fraudulent",
            "status": status,
        }
        return event(f"charge.dispute.{kind}", obj, created=self.created)
