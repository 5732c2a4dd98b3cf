"""StripePaymentGateway, the real SDK, against the fake Stripe over HTTP."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from stripe_harness import (
    API_KEY,
    BlockingGateway,
    FakeStripeServer,
    LoopThread,
    Receiver,
    checkout_params,
    free_port,
    poll_until,
)

from billing.adapters.stripe_gateway import StripePaymentGateway
from billing.devtools.stripe_fake import fake_action
from billing.domain.errors import GatewayRejected, GatewayUnavailable
from billing.domain.money import Money
from billing.ports import RefundParams


def sessions_stored(fake: FakeStripeServer) -> int:
    with sqlite3.connect(fake.state_path) as db:
        return int(db.execute(
            "SELECT COUNT(*) FROM objects WHERE kind = 'checkout.session'").fetchone()[0])


def refund_params(payment_intent_id: str, refund_key: str = "refund-1",
                  amount: int = 999) -> RefundParams:
    return RefundParams(refund_key=refund_key, payment_id="pay_r", reason="changed my mind",
                        payment_intent_id=payment_intent_id, amount=Money("USD", amount))


def paid_session(fake: FakeStripeServer, gateway: StripePaymentGateway) -> tuple[str, str]:
    session = gateway.create_checkout(checkout_params())
    fake_action(fake.api_base, "pay", session.session_id)
    intent = gateway.retrieve_checkout(session.session_id).payment_intent_id
    return session.session_id, intent


# -- create ---------------------------------------------------------------------------------
def test_creates_a_payment_mode_session_with_our_parameters(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    params = checkout_params("pay_create")
    snapshot = gateway.create_checkout(params)

    assert snapshot.session_id.startswith("cs_test_")
    assert snapshot.url == f"{fake.api_base}/c/pay/{snapshot.session_id}"
    assert (snapshot.status, snapshot.payment_status) == ("open", "unpaid")
    assert snapshot.amount == Money("USD", 999)  # Stripe's "usd", upper-cased
    assert snapshot.expires_at == params.expires_at
    assert snapshot.payment_id == "pay_create"
    raw = fake.api("GET", f"/v1/checkout/sessions/{snapshot.session_id}").json()
    assert raw["object"] == "checkout.session"
    assert raw["mode"] == "payment"
    assert raw["currency"] == "usd"
    assert raw["amount_total"] == 999
    assert raw["client_reference_id"] == "user-42"
    assert raw["expires_at"] == int(params.expires_at.timestamp())
    assert raw["success_url"] == params.success_url
    assert raw["metadata"] == {
        "user_id": "user-42", "coins": "100", "bonus": "10", "total_coins": "110",
        "package_id": "coins_100", "payment_id": "pay_create",
    }


def test_the_payment_intent_carries_our_payment_id(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    session = gateway.create_checkout(checkout_params("pay_pi"))
    fake_action(fake.api_base, "pay", session.session_id)

    succeeded, _ = receiver.wait_for_types("payment_intent.succeeded",
                                           "checkout.session.completed")
    assert succeeded.object["metadata"] == {"payment_id": "pay_pi"}
    assert gateway.retrieve_checkout(session.session_id).payment_intent_id == succeeded.object["id"]


def test_a_retried_create_returns_the_same_session_and_stores_one(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    params = checkout_params()
    first = gateway.create_checkout(params)
    again = fake.gateway().create_checkout(params)  # another process, the same stored row

    assert again == first
    assert sessions_stored(fake) == 1


def test_stripe_replays_a_key_with_idempotent_replayed(fake: FakeStripeServer) -> None:
    form = {"mode": "payment", "success_url": "https://app.example/ok",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "500",
            "line_items[0][price_data][product_data][name]": "coins",
            "line_items[0][quantity]": "1"}
    first = fake.api("POST", "/v1/checkout/sessions", form, headers={"Idempotency-Key": "k1"})
    again = fake.api("POST", "/v1/checkout/sessions", form, headers={"Idempotency-Key": "k1"})

    assert first.status == again.status == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers


def test_the_same_key_with_other_parameters_is_rejected(gateway: StripePaymentGateway) -> None:
    params = checkout_params()
    gateway.create_checkout(params)
    changed = checkout_params(params.payment_id, amount=Money("USD", 1999))

    with pytest.raises(GatewayRejected, match="same parameters"):
        gateway.create_checkout(changed)


def test_the_same_key_on_another_endpoint_is_an_idempotency_error(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    params = checkout_params()
    gateway.create_checkout(params)

    answer = fake.api("POST", "/v1/refunds", {"payment_intent": "pi_x"},
                      headers={"Idempotency-Key": params.idempotency_key})

    assert answer.status == 400
    assert answer.json()["error"]["type"] == "idempotency_error"
    assert "same endpoint" in answer.json()["error"]["message"]


def test_expires_at_outside_stripes_window_is_rejected(gateway: StripePaymentGateway) -> None:
    too_soon = datetime.now(UTC) + timedelta(minutes=5)

    with pytest.raises(GatewayRejected, match="expires_at"):
        gateway.create_checkout(checkout_params(expires_at=too_soon))


# -- retrieve and expire --------------------------------------------------------------------
def test_retrieving_an_unknown_session_is_rejected_with_stripes_message(
    gateway: StripePaymentGateway,
) -> None:
    with pytest.raises(GatewayRejected, match="No such checkout.session: 'cs_test_nope'"):
        gateway.retrieve_checkout("cs_test_nope")


def test_expiring_an_open_session(
    gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    params = checkout_params()
    session = gateway.create_checkout(params)

    expired = gateway.expire_checkout(session.session_id, params.payment_id)

    assert (expired.status, expired.payment_status, expired.url) == ("expired", "unpaid", "")
    (event,) = receiver.wait_for_types("checkout.session.expired")
    assert event.object["id"] == session.session_id
    # A retry (same key) gets Stripe's first answer.
    assert gateway.expire_checkout(session.session_id, params.payment_id) == expired


def test_expiring_a_paid_session_returns_it_as_it_is(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    params = checkout_params()
    session = gateway.create_checkout(params)
    fake_action(fake.api_base, "pay", session.session_id)

    answer = gateway.expire_checkout(session.session_id, params.payment_id)

    assert (answer.status, answer.payment_status) == ("complete", "paid")
    assert answer.payment_intent_id.startswith("pi_")


def test_expiring_an_unknown_session_is_rejected(gateway: StripePaymentGateway) -> None:
    with pytest.raises(GatewayRejected, match="No such checkout.session"):
        gateway.expire_checkout("cs_test_missing", "pay_x")


# -- refunds --------------------------------------------------------------------------------
def test_refunds_a_payment_once_whatever_the_retries(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    _, intent = paid_session(fake, gateway)

    refund = gateway.refund(refund_params(intent))
    again = gateway.refund(refund_params(intent))

    assert refund == again
    assert refund.refund_id.startswith("re_")
    assert (refund.status, refund.amount) == ("succeeded", Money("USD", 999))
    assert gateway.retrieve_refund(refund.refund_id) == refund
    deliveries = receiver.wait_for_types("payment_intent.succeeded", "checkout.session.completed",
                                         "refund.created", "charge.refunded")
    created, refunded = deliveries[2].object, deliveries[3].object
    assert created["metadata"] == {"refund_key": "refund-1", "payment_id": "pay_r",
                                   "reason": "changed my mind"}
    assert (created["reason"], created["payment_intent"]) == ("requested_by_customer", intent)
    assert (refunded["amount_refunded"], refunded["refunded"]) == (999, True)


def test_charge_refunded_carries_the_running_total(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    _, intent = paid_session(fake, gateway)

    gateway.refund(refund_params(intent, "part-1", amount=400))
    gateway.refund(refund_params(intent, "part-2", amount=599))

    deliveries = receiver.wait_for(lambda got: len(got) >= 6)
    totals = [d.object["amount_refunded"] for d in deliveries if d.type == "charge.refunded"]
    assert totals == [400, 999]


def test_refunding_more_than_is_left_is_rejected(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    _, intent = paid_session(fake, gateway)
    gateway.refund(refund_params(intent, "all"))

    with pytest.raises(GatewayRejected, match="already been refunded"):
        gateway.refund(refund_params(intent, "again"))


def test_refunding_an_unpaid_session_is_rejected(
    fake: FakeStripeServer, gateway: StripePaymentGateway
) -> None:
    session = gateway.create_checkout(checkout_params())
    fake_action(fake.api_base, "decline", session.session_id)
    intent = gateway.retrieve_checkout(session.session_id).payment_intent_id

    with pytest.raises(GatewayRejected, match="does not have a successful charge"):
        gateway.refund(refund_params(intent))


def test_retrieving_an_unknown_refund_is_rejected(gateway: StripePaymentGateway) -> None:
    with pytest.raises(GatewayRejected, match="No such refund"):
        gateway.retrieve_refund("re_missing")


# -- authentication and errors --------------------------------------------------------------
def test_a_refused_api_key_is_rejected_and_logged_without_the_key(
    fake: FakeStripeServer, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk_" + "live_0123456789abcdefWXYZ"  # split: no key pattern in the repository
    caplog.set_level(logging.ERROR, logger="billing.adapters.stripe_gateway")

    with pytest.raises(GatewayRejected) as refused:
        fake.gateway(api_key=wrong).create_checkout(checkout_params())

    assert refused.value.message == "Stripe refused our API key"
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    logged = caplog.text
    assert "refused our API key" in logged
    assert "WXYZ" not in logged and "sk_live_" not in logged and "0123456789" not in logged


def test_without_a_key_the_fake_answers_stripes_401(fake: FakeStripeServer) -> None:
    answer = fake.api("GET", "/v1/checkout/sessions/cs_test_x", key=None)

    assert answer.status == 401
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "You did not provide an API key" in error["message"]


def test_a_wrong_key_is_shown_masked(fake: FakeStripeServer) -> None:
    answer = fake.api("GET", "/v1/events", key="rk_test_secretsecret9876")

    assert answer.status == 401
    message = answer.json()["error"]["message"]
    assert message.startswith("Invalid API Key provided: rk_test_")
    assert "secretsecret" not in message


def test_stripe_messages_reach_us_without_secrets(gateway: StripePaymentGateway) -> None:
    with pytest.raises(GatewayRejected) as refused:
        gateway.retrieve_checkout("sk_test_leakedKey42")

    assert "leakedKey42" not in refused.value.message
    assert "[REDACTED]" in refused.value.message


def test_errors_are_stripe_shaped(fake: FakeStripeServer) -> None:
    unknown = fake.api("GET", "/v1/refunds/re_nope")
    assert unknown.status == 404
    assert unknown.json() == {"error": {
        "type": "invalid_request_error", "message": "No such refund: 're_nope'", "param": "id",
        "code": "resource_missing", "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
    }}
    assert unknown.headers["Request-Id"].startswith("req_")

    missing = fake.api("POST", "/v1/checkout/sessions", {"mode": "payment"})
    assert missing.status == 400
    assert missing.json()["error"]["param"] == "line_items"
    assert missing.json()["error"]["code"] == "parameter_missing"

    extra = fake.api("POST", "/v1/refunds", {"payment_intent": "pi_x", "amount_x": "1"})
    assert extra.status == 400
    assert extra.json()["error"]["message"] == "Received unknown parameter: amount_x"

    nowhere = fake.api("GET", "/v1/customers")
    assert nowhere.status == 404
    assert nowhere.json()["error"]["message"].startswith("Unrecognized request URL")


def test_an_unreachable_stripe_is_unavailable(loop_thread: LoopThread) -> None:
    port = free_port()  # nothing listens on it any more
    gateway = BlockingGateway(StripePaymentGateway(API_KEY, api_base=f"http://127.0.0.1:{port}",
                                                   max_network_retries=0, timeout_s=2),
                              loop_thread)

    with pytest.raises(GatewayUnavailable, match="could not be reached"):
        gateway.retrieve_checkout("cs_test_x")
    with pytest.raises(GatewayUnavailable):
        gateway.create_checkout(checkout_params())
    gateway.close()


@pytest.fixture
def failing_stripe(loop_thread: LoopThread) -> Iterator[Callable[[int], str]]:
    """A server answering every request with one status and a Stripe-shaped error."""
    runners: list[web.AppRunner] = []

    def start(status: int) -> str:
        async def answer(_: web.Request) -> web.Response:
            body = '{"error": {"type": "api_error", "message": "Something went wrong"}}'
            return web.Response(status=status, text=body, content_type="application/json")

        async def serve() -> str:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", answer)
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            return f"http://127.0.0.1:{port}"

        return loop_thread.run(serve())

    yield start
    for runner in runners:
        loop_thread.run(runner.cleanup())


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_rate_limits_are_unavailable(
    failing_stripe: Callable[[int], str], status: int, loop_thread: LoopThread
) -> None:
    gateway = BlockingGateway(StripePaymentGateway(API_KEY, api_base=failing_stripe(status),
                                                   max_network_retries=0), loop_thread)

    with pytest.raises(GatewayUnavailable):
        gateway.retrieve_checkout("cs_test_x")
    gateway.close()


# -- events, for reconciliation ---------------------------------------------------------------
def test_undelivered_events_are_listed_across_pages_oldest_first(
    start_fake: Callable[..., FakeStripeServer],
) -> None:
    fake = start_fake(webhook_url="")  # no endpoint: nothing is ever delivered
    gateway = fake.gateway()
    sessions = [gateway.create_checkout(checkout_params()) for _ in range(3)]
    for session in sessions:
        fake_action(fake.api_base, "pay", session.session_id)

    events = gateway.undelivered_events(limit=100)
    small_pages = fake.gateway().undelivered_events(limit=2)

    assert [e.type for e in events] == ["payment_intent.succeeded",
                                        "checkout.session.completed"] * 3
    assert [e.stripe_session_id for e in events if e.stripe_session_id] == [
        s.session_id for s in sessions]
    assert len({e.event_id for e in events}) == 6
    assert [e.event_id for e in small_pages] == [e.event_id for e in events[-2:]]
    completed = events[1]
    assert (completed.payment_status, completed.amount) == ("paid", Money("USD", 999))
    assert completed.payment_id == sessions[0].payment_id
    assert '"checkout.session.completed"' in completed.payload


def test_the_event_list_pages_like_stripe(start_fake: Callable[..., FakeStripeServer]) -> None:
    fake = start_fake(webhook_url="")
    gateway = fake.gateway()
    for _ in range(3):
        params = checkout_params()
        gateway.expire_checkout(gateway.create_checkout(params).session_id, params.payment_id)

    first = fake.api("GET", "/v1/events", {"delivery_success": "false", "limit": "2"}).json()
    rest = fake.api("GET", "/v1/events", {"delivery_success": "false", "limit": "2",
                                          "starting_after": first["data"][-1]["id"]}).json()

    assert (first["object"], first["url"], first["has_more"]) == ("list", "/v1/events", True)
    assert (len(first["data"]), len(rest["data"]), rest["has_more"]) == (2, 1, False)
    created = [e["created"] for e in first["data"] + rest["data"]]
    assert created == sorted(created, reverse=True)  # newest first
    event = rest["data"][0]
    assert event["object"] == "event" and event["livemode"] is False
    assert event["id"].startswith("evt_") and event["api_version"]
    assert fake.api("GET", "/v1/events", {"limit": "101"}).status == 400


def test_delivered_events_are_not_listed_as_undelivered(
    fake: FakeStripeServer, gateway: StripePaymentGateway, receiver: Receiver
) -> None:
    session = gateway.create_checkout(checkout_params())
    fake_action(fake.api_base, "pay", session.session_id)
    receiver.wait_for_types("payment_intent.succeeded", "checkout.session.completed")

    # The receiver answered; the fake records that right after.
    poll_until(lambda: not gateway.undelivered_events(), what="deliveries to be recorded")
    delivered = fake.api("GET", "/v1/events", {"delivery_success": "true"}).json()["data"]
    assert [e["pending_webhooks"] for e in delivered] == [0, 0]


# -- a slow Stripe (issue 10) -----------------------------------------------------------------
def test_the_fakes_latency_delays_every_answer_and_the_sdk_works_unchanged(
    start_fake: Callable[..., FakeStripeServer],
) -> None:
    fake = start_fake(latency_s=0.3)
    gateway = fake.gateway()

    started = time.monotonic()
    session = gateway.create_checkout(checkout_params())
    again = gateway.retrieve_checkout(session.session_id)
    elapsed = time.monotonic() - started

    assert again.session_id == session.session_id and again.status == "open"
    assert elapsed >= 0.6  # a lower bound only: two calls, each answered after the latency
    assert fake.api("GET", "/_fake/stats", key=None).json()["api_calls"] == 2


def test_the_sdks_connection_pool_holds_more_calls_than_aiohttps_default_of_100(
    start_fake: Callable[..., FakeStripeServer], loop_thread: LoopThread,
) -> None:
    fake = start_fake(latency_s=2.0)
    blocking = fake.gateway(max_connections=256)
    session = blocking.create_checkout(checkout_params())

    async def burst() -> list[str]:
        calls = [blocking.gateway.retrieve_checkout(session.session_id) for _ in range(150)]
        return [snapshot.session_id for snapshot in await asyncio.gather(*calls)]

    assert loop_thread.run(burst(), timeout=60) == [session.session_id] * 150
    # aiohttp's default pool would have held it at 100 at most (150 unless a loaded machine was
    # slower to send the last ones than the fake to answer the first ones).
    assert fake.api("GET", "/_fake/stats", key=None).json()["api_max_in_flight"] > 100
