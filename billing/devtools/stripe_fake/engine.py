"""What the fake Stripe does: sessions, payments with the test cards, refunds, disputes, events.

Every change writes its objects and the events Stripe would send, in Stripe's order, in the
caller's store transaction. Checks come before changes, so an error leaves nothing behind.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billing.devtools.stripe_fake import objects as o
from billing.devtools.stripe_fake.config import FakeStripeConfig
from billing.devtools.stripe_fake.errors import StripeApiError, invalid_state, missing
from billing.devtools.stripe_fake.store import FakeStripeStore, Record

SESSION = "checkout.session"
INTENT = "payment_intent"
CHARGE = "charge"
REFUND = "refund"
DISPUTE = "dispute"

# Stripe's test cards this fake knows (https://docs.stripe.com/testing).
CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_3DS = "4000002760003184"
CARD_DISPUTED = "4000000000000259"
CARD_REFUND_FAILS = "4000000000005126"
TEST_CARDS = {
    CARD_SUCCEEDS: "pays",
    CARD_DECLINED: "is declined",
    CARD_3DS: "asks for 3-D Secure (approve pays, fail declines)",
    CARD_DISPUTED: "pays, then is disputed as fraudulent",
    CARD_REFUND_FAILS: "pays; a later refund of it fails",
}

_MIN_TTL_S = 30 * 60
_MAX_TTL_S = 24 * 3600
_CLOCK_SLACK_S = 60

_SESSION_PARAMS = frozenset({
    "mode", "line_items", "client_reference_id", "metadata", "payment_intent_data", "expires_at",
    "success_url", "cancel_url", "customer_email", "locale", "expand", "payment_method_types",
})
_LINE_ITEM_PARAMS = frozenset({"price_data", "quantity", "price"})
_PRICE_DATA_PARAMS = frozenset({"currency", "unit_amount", "product_data"})
_PRODUCT_DATA_PARAMS = frozenset({"name", "description", "metadata", "images"})
_INTENT_DATA_PARAMS = frozenset({"metadata", "description"})
_REFUND_PARAMS = frozenset({"payment_intent", "charge", "amount", "reason", "metadata", "expand"})
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_EVENT_LIST_PARAMS = frozenset({
    "limit", "starting_after", "ending_before", "delivery_success", "type", "types", "expand",
})

_DECLINED = {
    "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
    "message": "Your card was declined.",
}
_AUTHENTICATION_FAILED = {
    "type": "invalid_request_error", "code": "payment_intent_authentication_failure",
    "message": "We are unable to authenticate your payment method. Please choose a different "
               "payment method and try again.",
}
_DEBIT_FAILED = {
    "type": "invalid_request_error", "code": "payment_method_not_available",
    "message": "The customer's bank could not process the debit (insufficient funds).",
}


@dataclass(frozen=True, slots=True)
class CardOutcome:
    status: str  # paid | declined | requires_action
    message: str = ""


class FakeStripe:
    def __init__(self, store: FakeStripeStore, config: FakeStripeConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self._clock = clock

    # == the API =============================================================================
    def create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        o.refuse_unknown(params, _SESSION_PARAMS)
        mode = o.text(o.required(params, "mode"), "mode")
        if mode != "payment":
            raise StripeApiError(400, f"The fake Stripe supports mode=payment only, not {mode}.",
                                 param="mode")
        items, amount, currency = self._line_items(o.required(params, "line_items"))
        success_url = o.text(o.required(params, "success_url"), "success_url", 5000)
        cancel_url = params.get("cancel_url")
        reference = params.get("client_reference_id")
        expires_at = now + _MAX_TTL_S
        if params.get("expires_at") not in (None, ""):
            expires_at = o.integer(params["expires_at"], "expires_at")
            earliest, latest = now + _MIN_TTL_S - _CLOCK_SLACK_S, now + _MAX_TTL_S + _CLOCK_SLACK_S
            if not earliest <= expires_at <= latest:
                raise StripeApiError(
                    400, "The `expires_at` timestamp must be between 30 minutes and 24 hours"
                    " from Checkout Session creation.", param="expires_at")
        intent_data = o.mapping(params.get("payment_intent_data") or {}, "payment_intent_data")
        o.refuse_unknown(intent_data, _INTENT_DATA_PARAMS, "payment_intent_data")
        session = o.checkout_session(
            o.new_id("cs_test_", 58),
            created=now,
            amount=amount,
            currency=currency,
            expires_at=expires_at,
            success_url=success_url,
            cancel_url=o.text(cancel_url, "cancel_url") if cancel_url else None,
            client_reference_id=(o.text(reference, "client_reference_id", 200)
                                 if reference else None),
            customer_email=(o.text(params["customer_email"], "customer_email", 800)
                            if params.get("customer_email") else None),
            metadata=o.metadata(params.get("metadata")),
        )
        private = {
            "line_items": items,
            "intent_metadata": o.metadata(intent_data.get("metadata"),
                                          "payment_intent_data[metadata]"),
            "intent_description": intent_data.get("description"),
            "step": "",  # "3ds": waiting for the 3-D Secure answer; "bank_debit": for the bank
        }
        self.store.put(SESSION, Record(session, private))
        self.store.add_timer(expires_at, "expire_session", session["id"])
        return self.present(session)

    def session(self, session_id: str) -> dict[str, Any]:
        return self.present(self._session(session_id).body)

    def expire_session(self, session_id: str) -> dict[str, Any]:
        record = self._session(session_id)
        status = record.body["status"]
        if status != "open":
            raise invalid_state(
                f"Only Checkout Sessions with a status in [\"open\"] can be expired. This"
                f" Checkout Session has a status of \"{status}\"."
            )
        self._expire(record)
        return self.present(record.body)

    def create_refund(self, params: dict[str, Any], *, dashboard: bool = False) -> dict[str, Any]:
        o.refuse_unknown(params, _REFUND_PARAMS)
        charge = self._charge_to_refund(params)
        amount_left = charge.body["amount"] - charge.body["amount_refunded"]
        amount = amount_left
        if params.get("amount") not in (None, ""):
            amount = o.integer(params["amount"], "amount", minimum=1)
        reason = params.get("reason") or None
        if reason is not None and reason not in _REFUND_REASONS:
            raise StripeApiError(400, f"Invalid reason: must be one of "
                                 f"{', '.join(sorted(_REFUND_REASONS))}", param="reason")
        metadata = o.metadata(params.get("metadata"))
        if charge.body["disputed"]:
            raise invalid_state(f"Charge {charge.body['id']} has been charged back; cannot"
                                " issue a refund.", code="charge_disputed")
        if amount_left == 0:
            raise invalid_state(f"Charge {charge.body['id']} has already been refunded.",
                                code="charge_already_refunded")
        if amount > amount_left:
            raise invalid_state(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge"
                f" ({amount_left})", param="amount", code="amount_too_large")
        return self._refund(charge, amount, reason, metadata, dashboard=dashboard)

    def refund(self, refund_id: str) -> dict[str, Any]:
        return self._get(refund_id, REFUND, "refund").body

    def event(self, event_id: str) -> dict[str, Any]:
        stored = self.store.event(event_id)
        if stored is None:
            raise missing("event", event_id, "id")
        return stored.as_object()

    def list_events(self, params: dict[str, Any]) -> dict[str, Any]:
        o.refuse_unknown(params, _EVENT_LIST_PARAMS)
        limit = 10
        if params.get("limit") not in (None, ""):
            limit = o.integer(params["limit"], "limit", minimum=1, maximum=100)
        delivered: bool | None = None
        if params.get("delivery_success") not in (None, ""):
            flag = params["delivery_success"]
            if flag not in ("true", "false"):
                raise StripeApiError(400, f"Invalid boolean: {flag}", param="delivery_success")
            delivered = flag == "true"
        types = [o.text(t, "types") for t in params.get("types") or []]
        if params.get("type"):
            types.append(o.text(params["type"], "type"))
        if any("*" in t for t in types):
            raise StripeApiError(400, "The fake Stripe does not support wildcards in type.",
                                 param="type")
        page, has_more = self.store.list_events(
            limit=limit,
            before_seq=self._cursor(params, "starting_after"),
            after_seq=self._cursor(params, "ending_before"),
            delivered=delivered,
            types=types,
        )
        return {
            "object": "list",
            "url": "/v1/events",
            "has_more": has_more,
            "data": [stored.as_object() for stored in page],
        }

    # == what a customer does on the checkout page ============================================
    def pay_with_card(self, session_id: str, number: str) -> CardOutcome:
        record = self._open_session(session_id)
        number = "".join(number.split()).replace("-", "")
        if number not in TEST_CARDS:
            raise StripeApiError(
                400, "Your card number is not one of the fake Stripe's test cards: use "
                + ", ".join(TEST_CARDS), param="card_number", code="incorrect_number")
        intent = self._intent_for(record)
        if number == CARD_DECLINED:
            self._fail_intent(intent, _DECLINED)
            return CardOutcome("declined", _DECLINED["message"])
        if number == CARD_3DS:
            intent.body["status"] = "requires_action"
            record.private["step"] = "3ds"
            self.store.put(INTENT, intent)
            self.store.put(SESSION, record)
            return CardOutcome("requires_action")
        self._succeed(record, intent, number)
        return CardOutcome("paid")

    def answer_3ds(self, session_id: str, approve: bool) -> CardOutcome:
        record = self._open_session(session_id)
        if record.private.get("step") != "3ds":
            raise invalid_state("This Checkout Session is not waiting for 3-D Secure.")
        record.private["step"] = ""
        intent = self._intent_for(record)
        if not approve:
            self._fail_intent(intent, _AUTHENTICATION_FAILED)
            self.store.put(SESSION, record)
            return CardOutcome("declined", _AUTHENTICATION_FAILED["message"])
        self._succeed(record, intent, CARD_3DS)
        return CardOutcome("paid")

    def start_bank_debit(self, session_id: str) -> None:
        """The delayed path: complete now with payment_status=unpaid, money later."""
        record = self._open_session(session_id)
        intent = self._intent_for(record)
        intent.body["status"] = "processing"
        intent.body["payment_method_types"] = ["us_bank_account"]
        intent.body["last_payment_error"] = None
        record.body.update(status="complete", payment_status="unpaid")
        record.private["step"] = "bank_debit"
        self.store.put(INTENT, intent)
        self.store.put(SESSION, record)
        self._emit("checkout.session.completed", self.present(record.body))

    def settle_bank_debit(self, session_id: str, succeeded: bool) -> None:
        record = self._session(session_id)
        if record.private.get("step") != "bank_debit":
            raise invalid_state("This Checkout Session has no bank debit waiting to settle.")
        record.private["step"] = ""
        intent = self._intent_for(record)
        if succeeded:
            charge = self._new_charge(intent, method="us_bank_account", last4="6789")
            intent.body.update(status="succeeded", amount_received=intent.body["amount"],
                               latest_charge=charge.body["id"])
            record.body["payment_status"] = "paid"
            self.store.put(INTENT, intent)
            self.store.put(SESSION, record)
            self._emit("payment_intent.succeeded", intent.body)
            self._emit("checkout.session.async_payment_succeeded", self.present(record.body))
        else:
            intent.body.update(status="requires_payment_method",
                               last_payment_error=dict(_DEBIT_FAILED))
            self.store.put(INTENT, intent)
            self.store.put(SESSION, record)
            self._emit("payment_intent.payment_failed", intent.body)
            self._emit("checkout.session.async_payment_failed", self.present(record.body))

    # == what happens later, or from the dashboard =============================================
    def dispute(self, session_id: str) -> dict[str, Any]:
        charge = self._paid_charge(self._session(session_id))
        return self._dispute(charge)

    def close_dispute(self, session_id: str, won: bool) -> dict[str, Any]:
        charge = self._paid_charge(self._session(session_id))
        dispute_id = charge.private.get("dispute")
        if not dispute_id:
            raise invalid_state(f"Charge {charge.body['id']} has no dispute.")
        dispute = self._get(dispute_id, DISPUTE, "dispute")
        if dispute.body["status"] in ("won", "lost"):
            raise invalid_state(f"Dispute {dispute_id} is already closed.")
        dispute.body["status"] = "won" if won else "lost"
        self.store.put(DISPUTE, dispute)
        if won:
            charge.body["disputed"] = False
            self.store.put(CHARGE, charge)
        self._emit("charge.dispute.closed", dispute.body)
        return dispute.body

    def dashboard_refund(self, session_id: str, amount: int | None = None) -> dict[str, Any]:
        """A refund made outside the billing service: no refund_key in its metadata."""
        intent_id = self._session(session_id).body["payment_intent"]
        if not intent_id:
            raise invalid_state(f"Checkout Session {session_id} has not been paid.")
        params: dict[str, Any] = {"payment_intent": intent_id,
                                  "reason": "requested_by_customer"}
        if amount is not None:
            params["amount"] = str(amount)
        return self.create_refund(params, dashboard=True)

    def fail_refund(self, refund_id: str) -> dict[str, Any]:
        refund = self._get(refund_id, REFUND, "refund")
        if refund.body["status"] in ("failed", "canceled"):
            return refund.body
        previous = {"status": refund.body["status"], "failure_reason": None}
        refund.body.update(status="failed", failure_reason="expired_or_canceled_card")
        charge = self._get(refund.body["charge"], CHARGE, "charge")
        charge.body["amount_refunded"] -= refund.body["amount"]
        charge.body["refunded"] = False
        self.store.put(REFUND, refund)
        self.store.put(CHARGE, charge)
        self._emit("refund.updated", refund.body, previous)
        self._emit("refund.failed", refund.body)
        return refund.body

    def latest_refund(self, session_id: str) -> str | None:
        charge = self._paid_charge(self._session(session_id))
        refunds: list[str] = charge.private.get("refunds", [])
        return refunds[-1] if refunds else None

    def run_due_timers(self) -> int:
        """Expire sessions past expires_at, fail refunds of card 5126; returns how many ran."""
        ran = 0
        for action, target in self.store.pop_due_timers(self._clock()):
            ran += 1
            if action == "expire_session":
                record = self.store.get(target, SESSION)
                if record is not None and record.body["status"] == "open":
                    self._expire(record)
            elif action == "fail_refund":
                self.fail_refund(target)
        return ran

    def next_timer_at(self) -> float | None:
        return self.store.next_timer_at()

    # == presentation =======================================================================
    def present(self, session: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(session)
        if shown["status"] == "open":
            shown["url"] = f"{self.config.public_url.rstrip('/')}/c/pay/{shown['id']}"
        return shown

    def session_view(self, session_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The session and its private part (line items, current step), for the page."""
        record = self._session(session_id)
        return self.present(record.body), record.private

    # == internals ==========================================================================
    def _now(self) -> int:
        return int(self._clock())

    def _emit(self, event_type: str, obj: dict[str, Any],
              previous: dict[str, Any] | None = None) -> None:
        event = o.event_object(o.new_id("evt_"), event_type, self._now(), copy.deepcopy(obj),
                               previous)
        self.store.add_event(event, self._clock())

    def _get(self, object_id: str, kind: str, name: str, param: str = "id") -> Record:
        record = self.store.get(object_id, kind)
        if record is None:
            raise missing(name, object_id, param)
        return record

    def _session(self, session_id: str) -> Record:
        return self._get(session_id, SESSION, "checkout.session", "session")

    def _open_session(self, session_id: str) -> Record:
        record = self._session(session_id)
        if record.body["status"] != "open":
            raise invalid_state(f"This Checkout Session is {record.body['status']}.",
                                code="checkout_session_not_open")
        return record

    def _line_items(self, given: Any) -> tuple[list[dict[str, Any]], int, str]:
        if not isinstance(given, list) or not given:
            raise StripeApiError(400, "Invalid array: line_items", param="line_items")
        items: list[dict[str, Any]] = []
        currencies: set[str] = set()
        total = 0
        for index, raw in enumerate(given):
            where = f"line_items[{index}]"
            item = o.mapping(raw, where)
            o.refuse_unknown(item, _LINE_ITEM_PARAMS, where)
            if "price" in item:
                raise StripeApiError(400, "The fake Stripe supports price_data only.",
                                     param=f"{where}[price]")
            price = o.mapping(o.required(item, "price_data", where), f"{where}[price_data]")
            o.refuse_unknown(price, _PRICE_DATA_PARAMS, f"{where}[price_data]")
            product = o.mapping(o.required(price, "product_data", f"{where}[price_data]"),
                                f"{where}[price_data][product_data]")
            o.refuse_unknown(product, _PRODUCT_DATA_PARAMS, f"{where}[price_data][product_data]")
            name = o.text(o.required(product, "name", f"{where}[price_data][product_data]"),
                          f"{where}[price_data][product_data][name]", 250)
            description = product.get("description")
            if description == "":
                param = f"{where}[price_data][product_data][description]"
                raise StripeApiError(
                    400, f"You passed an empty string for '{param}'. We assume empty values are"
                    " an attempt to unset a parameter; however "
                    f"'{param}' cannot be unset.", param=param)
            unit = o.integer(o.required(price, "unit_amount", f"{where}[price_data]"),
                             f"{where}[price_data][unit_amount]", minimum=0, maximum=99999999)
            quantity = o.integer(o.required(item, "quantity", where), f"{where}[quantity]",
                                 minimum=1)
            currencies.add(o.currency(o.required(price, "currency", f"{where}[price_data]"),
                                      f"{where}[price_data][currency]"))
            total += unit * quantity
            items.append({"name": name, "description": description, "unit_amount": unit,
                          "quantity": quantity})
        if len(currencies) != 1:
            raise StripeApiError(400, "All line items must use the same currency.",
                                 param="line_items")
        return items, total, currencies.pop()

    def _intent_for(self, record: Record) -> Record:
        """The session's PaymentIntent, made on the first payment attempt (as Stripe does)."""
        intent_id = record.body["payment_intent"]
        if intent_id:
            return self._get(intent_id, INTENT, "payment_intent")
        session = record.body
        intent = Record(
            o.payment_intent(o.new_id("pi_"), created=self._now(),
                             amount=session["amount_total"], currency=session["currency"],
                             description=record.private.get("intent_description"),
                             metadata=dict(record.private.get("intent_metadata", {}))),
            {},
        )
        session["payment_intent"] = intent.body["id"]
        self.store.put(INTENT, intent)
        self.store.put(SESSION, record)
        return intent

    def _fail_intent(self, intent: Record, error: dict[str, str]) -> None:
        intent.body.update(status="requires_payment_method", last_payment_error=dict(error))
        self.store.put(INTENT, intent)
        self._emit("payment_intent.payment_failed", intent.body)

    def _new_charge(self, intent: Record, *, method: str, last4: str) -> Record:
        charge = Record(o.charge(o.new_id("ch_"), created=self._now(), intent=intent.body,
                                 method=method, last4=last4), {"refunds": []})
        self.store.put(CHARGE, charge)
        return charge

    def _succeed(self, record: Record, intent: Record, number: str) -> None:
        """A card payment went through: the charge, then Stripe's two events (and card 0259's
        dispute)."""
        charge = self._new_charge(intent, method="card", last4=number[-4:])
        charge.private["refund_fails"] = number == CARD_REFUND_FAILS
        self.store.put(CHARGE, charge)
        intent.body.update(status="succeeded", amount_received=intent.body["amount"],
                           latest_charge=charge.body["id"], last_payment_error=None)
        record.body.update(status="complete", payment_status="paid")
        record.private["step"] = ""
        self.store.put(INTENT, intent)
        self.store.put(SESSION, record)
        self._emit("payment_intent.succeeded", intent.body)
        self._emit("checkout.session.completed", self.present(record.body))
        if number == CARD_DISPUTED:
            self._dispute(charge)

    def _expire(self, record: Record) -> None:
        record.body["status"] = "expired"
        record.private["step"] = ""
        intent_id = record.body["payment_intent"]
        if intent_id:  # Stripe cancels the unpaid PaymentIntent with the session
            intent = self._get(intent_id, INTENT, "payment_intent")
            if intent.body["status"] != "succeeded":
                intent.body["status"] = "canceled"
                self.store.put(INTENT, intent)
        self.store.put(SESSION, record)
        self._emit("checkout.session.expired", self.present(record.body))

    def _charge_to_refund(self, params: dict[str, Any]) -> Record:
        if params.get("charge"):
            return self._get(o.text(params["charge"], "charge"), CHARGE, "charge", "charge")
        intent_id = o.text(o.required(params, "payment_intent"), "payment_intent")
        intent = self._get(intent_id, INTENT, "payment_intent", "payment_intent")
        if intent.body["status"] != "succeeded" or not intent.body["latest_charge"]:
            raise invalid_state(
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent")
        return self._get(intent.body["latest_charge"], CHARGE, "charge", "charge")

    def _refund(self, charge: Record, amount: int, reason: str | None,
                metadata: dict[str, str], *, dashboard: bool) -> dict[str, Any]:
        refund = Record(o.refund(o.new_id("re_"), created=self._now(), charge_obj=charge.body,
                                 amount=amount, reason=reason, metadata=metadata),
                        {"dashboard": dashboard})
        charge.body["amount_refunded"] += amount
        charge.body["refunded"] = charge.body["amount_refunded"] == charge.body["amount"]
        charge.private.setdefault("refunds", []).append(refund.body["id"])
        self.store.put(REFUND, refund)
        self.store.put(CHARGE, charge)
        self._emit("refund.created", refund.body)
        self._emit("charge.refunded", charge.body)
        if charge.private.get("refund_fails"):
            # Card 5126: the refund succeeds first and fails later, as in Stripe's test mode.
            self.store.add_timer(self._clock() + self.config.refund_failure_delay_s,
                                 "fail_refund", refund.body["id"])
        return refund.body

    def _paid_charge(self, record: Record) -> Record:
        intent_id = record.body["payment_intent"]
        intent = self.store.get(intent_id, INTENT) if intent_id else None
        if intent is None or not intent.body["latest_charge"]:
            raise invalid_state(f"Checkout Session {record.body['id']} has not been paid.")
        return self._get(intent.body["latest_charge"], CHARGE, "charge")

    def _dispute(self, charge: Record) -> dict[str, Any]:
        if charge.private.get("dispute"):
            raise invalid_state(f"Charge {charge.body['id']} is already disputed.")
        if charge.body["refunded"]:
            raise invalid_state(f"Charge {charge.body['id']} is fully refunded; it cannot be"
                                " disputed.")
        dispute = Record(o.dispute(o.new_id("dp_"), created=self._now(), charge_obj=charge.body),
                         {})
        charge.body["disputed"] = True
        charge.private["dispute"] = dispute.body["id"]
        self.store.put(DISPUTE, dispute)
        self.store.put(CHARGE, charge)
        self._emit("charge.dispute.created", dispute.body)
        return dispute.body

    def _cursor(self, params: dict[str, Any], name: str) -> int | None:
        event_id = params.get(name)
        if not event_id:
            return None
        stored = self.store.event(o.text(event_id, name))
        if stored is None:
            raise missing("event", event_id, name)
        return stored.seq
