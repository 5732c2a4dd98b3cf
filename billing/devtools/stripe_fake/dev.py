"""Developer endpoints under /_fake: what the dashboard and `stripe trigger` give, offline.

No API key: the fake is a local tool (bind it to loopback). Each answer is JSON:
`{"session": {...}, "events": [{"id", "type"}, ...]}` plus `"object"` (the refund or dispute)
where one was made; errors are Stripe-shaped.

    POST /_fake/sessions/{id}/pay        card_number=... (default 4242 4242 4242 4242; the 3-D
                                         Secure card is approved)
    POST /_fake/sessions/{id}/decline    card 4000 0000 0000 0002
    POST /_fake/sessions/{id}/expire
    POST /_fake/sessions/{id}/refund     amount=... (default: what is left); a dashboard refund,
                                         so its metadata has no refund_key
    POST /_fake/sessions/{id}/dispute
    GET  /_fake/sessions/{id}
    POST /_fake/trigger                  type=EVENT_TYPE&session=cs_... (see TRIGGERS)
    POST /_fake/events/{id}/resend       deliver an event again (as the dashboard's "Resend")
    GET  /_fake/stats                    API calls answered, in flight now, and most at once
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from billing.devtools.stripe_fake.engine import CARD_3DS, CARD_DECLINED, CARD_SUCCEEDS, FakeStripe
from billing.devtools.stripe_fake.errors import StripeApiError, missing
from billing.devtools.stripe_fake.forms import parse_form
from billing.devtools.stripe_fake.objects import integer
from billing.devtools.stripe_fake.runtime import RUNTIME

Action = Callable[[FakeStripe, str, dict[str, Any]], dict[str, Any] | None]

ACTIONS = ("pay", "decline", "expire", "refund", "dispute")


async def _stats(request: web.Request) -> web.Response:
    stats = request.app[RUNTIME].stats
    return web.json_response({"api_calls": stats.calls, "api_in_flight": stats.in_flight,
                              "api_max_in_flight": stats.max_in_flight})


def _pay(engine: FakeStripe, session_id: str, params: dict[str, Any]) -> None:
    """Pay as a customer would; a declining card leaves the session open (see the events)."""
    number = str(params.get("card_number") or CARD_SUCCEEDS)
    outcome = engine.pay_with_card(session_id, number)
    if outcome.status == "requires_action" and "".join(number.split()) == CARD_3DS:
        engine.answer_3ds(session_id, approve=True)


def _decline(engine: FakeStripe, session_id: str, _: dict[str, Any]) -> None:
    engine.pay_with_card(session_id, CARD_DECLINED)


def _expire(engine: FakeStripe, session_id: str, _: dict[str, Any]) -> None:
    engine.expire_session(session_id)


def _refund(engine: FakeStripe, session_id: str, params: dict[str, Any]) -> dict[str, Any]:
    amount = params.get("amount")
    return engine.dashboard_refund(
        session_id, integer(amount, "amount", minimum=1) if amount else None
    )


def _dispute(engine: FakeStripe, session_id: str, _: dict[str, Any]) -> dict[str, Any]:
    return engine.dispute(session_id)


def _async_payment(succeeded: bool) -> Action:
    def run(engine: FakeStripe, session_id: str, _: dict[str, Any]) -> None:
        _, private = engine.session_view(session_id)
        if private.get("step") != "bank_debit":
            engine.start_bank_debit(session_id)
        engine.settle_bank_debit(session_id, succeeded)

    return run


def _failed_refund(engine: FakeStripe, session_id: str, _: dict[str, Any]) -> dict[str, Any]:
    latest = engine.latest_refund(session_id)
    if latest is None or engine.refund(latest)["status"] in ("failed", "canceled"):
        latest = engine.dashboard_refund(session_id)["id"]
    return engine.fail_refund(latest)


def _close_dispute(engine: FakeStripe, session_id: str, params: dict[str, Any]) -> dict[str, Any]:
    status = params.get("status") or "won"
    if status not in ("won", "lost"):
        raise StripeApiError(400, "status must be won or lost", param="status")
    return engine.close_dispute(session_id, won=status == "won")


# What `billing trigger EVENT_TYPE --session ID` makes happen to that session.
TRIGGERS: dict[str, Action] = {
    "checkout.session.completed": _pay,
    "payment_intent.succeeded": _pay,
    "payment_intent.payment_failed": _decline,
    "checkout.session.expired": _expire,
    "checkout.session.async_payment_succeeded": _async_payment(True),
    "checkout.session.async_payment_failed": _async_payment(False),
    "refund.created": _refund,
    "charge.refunded": _refund,
    "refund.updated": _failed_refund,
    "refund.failed": _failed_refund,
    "charge.dispute.created": _dispute,
    "charge.dispute.closed": _close_dispute,
}
_BY_ACTION: dict[str, Action] = {
    "pay": _pay, "decline": _decline, "expire": _expire, "refund": _refund, "dispute": _dispute,
}


def add_dev_routes(app: web.Application) -> None:
    app.router.add_post("/_fake/sessions/{id}/{action}", _session_action)
    app.router.add_get("/_fake/sessions/{id}", _show_session)
    app.router.add_post("/_fake/trigger", _trigger)
    app.router.add_post("/_fake/events/{id}/resend", _resend)
    app.router.add_get("/_fake/stats", _stats)


async def _session_action(request: web.Request) -> web.Response:
    action = _BY_ACTION.get(request.match_info["action"])
    if action is None:
        return _error(StripeApiError(
            404, f"Unknown action {request.match_info['action']!r}: use one of"
            f" {', '.join(ACTIONS)}."))
    return await _perform(request, request.match_info["id"], action)


async def _trigger(request: web.Request) -> web.Response:
    try:
        params = await _params(request)
    except StripeApiError as error:
        return _error(error)
    event_type = str(params.get("type") or "")
    session_id = str(params.get("session") or "")
    action = TRIGGERS.get(event_type)
    if action is None:
        return _error(StripeApiError(
            400, f"Cannot trigger {event_type!r}; supported: {', '.join(sorted(TRIGGERS))}.",
            param="type"))
    if not session_id:
        return _error(StripeApiError(400, "Missing required param: session.", param="session"))
    return await _perform(request, session_id, action, params)


async def _show_session(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        session, private = runtime.engine.session_view(request.match_info["id"])
    except StripeApiError as error:
        return _error(error)
    return _ok({"session": session, "step": private.get("step", "")})


async def _resend(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    event_id = request.match_info["id"]
    stored = runtime.store.event(event_id)
    if stored is None:
        return _error(missing("event", event_id, "id"))
    # attempts=1: a resend is never dropped (drop_rate applies to first deliveries only).
    runtime.store.mark_delivery(event_id, "pending", attempts=max(1, stored.attempts),
                                next_attempt_at=time.time(), last_response="resend requested")
    runtime.sender.wake()
    return _ok({"event": {"id": stored.id, "type": stored.type}})


async def _perform(request: web.Request, session_id: str, action: Action,
                   params: dict[str, Any] | None = None) -> web.Response:
    runtime = request.app[RUNTIME]
    store = runtime.store
    try:
        if params is None:
            params = await _params(request)
        with store.transaction():
            before = store.last_event_seq()
            made = action(runtime.engine, session_id, params)
            events = store.events_after(before)
            session = runtime.engine.session(session_id)
    except StripeApiError as error:
        return _error(error)
    runtime.sender.wake()
    answer: dict[str, Any] = {
        "session": session,
        "events": [{"id": event.id, "type": event.type} for event in events],
    }
    if made is not None:
        answer["object"] = made
    return _ok(answer)


async def _params(request: web.Request) -> dict[str, Any]:
    return parse_form(parse_qsl(request.query_string, keep_blank_values=True)
                      + parse_qsl(await request.text(), keep_blank_values=True))


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, indent=2), content_type="application/json")


def _error(error: StripeApiError) -> web.Response:
    return web.Response(status=error.status, text=json.dumps(error.body(), indent=2),
                        content_type="application/json")
