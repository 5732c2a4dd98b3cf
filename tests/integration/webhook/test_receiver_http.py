"""The receiver's HTTP contract: what is refused (and stores nothing), 503, 500, liveness, admin."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from billing.adapters.metrics import Metrics
from billing.adapters.webhook import create_admin_app, create_public_app
from billing.domain.payment import PaymentStatus
from billing.domain.payment_events import PaymentEvent

from .conftest import NOW, OLD_SECRET, SECRET, WEBHOOK, StripeSender
from .harness import RunningApp, Service, committed_by_group, request
from .stripe_events import encode, event, stripe_signature


def count(metrics: Metrics, outcome: str, event_type: str) -> float:
    value = metrics.registry.get_sample_value(
        "billing_webhook_events_total", {"type": event_type, "outcome": outcome}
    )
    return value or 0.0


def assert_nothing_stored(service: Service) -> None:
    assert service.inbox() == {} and service.ledger() == []


# -- refused before the use case ---------------------------------------------------------------
def test_a_signed_event_is_recorded_and_a_forged_one_is_not(service, stripe):
    events = service.checkout("alice")
    forged = stripe.send(events.completed(), secret="whsec_guessed")
    assert forged.status == 400 and "signature" in forged.json()["error"]
    assert_nothing_stored(service)
    assert count(service.metrics, "rejected_signature", "unknown") == 1
    assert stripe.send(events.completed()).json()["outcome"] == "applied"


def test_an_event_signed_with_the_previous_secret_is_accepted_during_rotation(service, stripe):
    events = service.checkout("alice")
    assert stripe.send(events.completed(), secret=OLD_SECRET).status == 200
    assert service.balance("alice") == 1200


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_stale_or_future_delivery_is_refused(service, stripe, skew):
    events = service.checkout("alice")
    reply = stripe.send(events.completed(), timestamp=NOW + skew)
    assert reply.status == 400 and "timestamp" in reply.json()["error"]
    assert_nothing_stored(service)


@pytest.mark.parametrize(
    "signature", [None, "garbage", f"t={NOW},v0={'a' * 64}", f"t=soon,v1={'a' * 64}"]
)
def test_a_missing_or_garbled_signature_header_is_a_400_with_a_json_error(
    service, stripe, signature
):
    reply = stripe.send_raw(encode(service.checkout("alice").completed()), signature)
    assert reply.status == 400 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["error"]
    assert_nothing_stored(service)


def test_a_body_changed_after_signing_is_refused(service, stripe):
    document = service.checkout("alice").completed()
    signature = stripe_signature(encode(document), SECRET, NOW)
    document["data"]["object"]["amount_total"] = 1
    assert stripe.send_raw(encode(document), signature).status == 400
    assert_nothing_stored(service)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe{}", b"[1, 2]", b'"evt_1"', b"[" * 100_000 + b"]" * 100_000,
     b'{"type": "checkout.session.completed"}', b'{"id": "evt_1"}'],
)
def test_a_signed_but_unreadable_payload_is_a_400_and_stores_nothing(service, stripe, body):
    reply = stripe.signed(body)
    assert reply.status == 400 and reply.json()["error"]
    assert_nothing_stored(service)
    assert count(service.metrics, "rejected", "unknown") == 1


def test_a_known_type_with_an_unreadable_object_is_recorded_as_rejected(service, stripe):
    document = service.checkout("alice").completed()
    del document["data"]["object"]["amount_total"]
    reply = stripe.send(document)
    assert reply.status == 200 and reply.json()["outcome"] == "rejected"
    stored = service.inbox()[document["id"]]
    assert stored.outcome.value == "rejected" and "amount_total" in stored.error
    assert service.ledger() == []


def test_a_body_over_the_limit_is_a_413_even_when_signed(service, stripe):
    document = service.checkout("alice").completed()
    document["data"]["object"]["metadata"]["padding"] = "x" * (300 * 1024)
    reply = stripe.send(document)
    assert reply.status == 413 and "larger than" in reply.json()["error"]
    assert_nothing_stored(service)


def test_a_chunked_body_over_the_limit_is_a_413(service, stripe):
    chunks = (b"x" * 1024 for _ in range(300))
    reply = stripe.send_raw(chunks, f"t={NOW},v1={'a' * 64}", **{"Transfer-Encoding": "chunked"})
    assert reply.status == 413 and reply.json()["error"]
    assert_nothing_stored(service)


def test_a_body_that_cannot_be_decoded_is_a_400_not_a_bug(service, stripe, caplog):
    with caplog.at_level(logging.INFO, logger="billing.webhook"):
        reply = stripe.send_raw(b"not gzip at all", f"t={NOW},v1={'a' * 64}",
                                **{"Content-Encoding": "gzip"})
    assert reply.status == 400 and reply.json() == {"error": "the body cannot be decoded"}
    assert count(service.metrics, "rejected", "unknown") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert_nothing_stored(service)


def test_a_body_exactly_at_the_limit_is_read():
    service = Service()
    document = service.checkout("alice").completed()
    body = encode(document)
    app = create_public_app(committed_by_group(service.apply_event, service.metrics), [SECRET],
                            service.metrics, max_body=len(body), now=lambda: float(NOW))
    with RunningApp(app) as running:
        sender = StripeSender(running.port)
        assert sender.signed(body).status == 200
        assert sender.signed(body + b" ").status == 413


def test_other_methods_and_paths_answer_json_errors(stripe):
    assert request(stripe.port, "GET", WEBHOOK).status == 405
    missing = request(stripe.port, "GET", "/metrics")  # never on the public port
    assert missing.status == 404 and missing.json() == {"error": "Not Found"}


# -- the store and the unexpected ---------------------------------------------------------------
def test_a_store_outage_answers_503_keeps_nothing_and_the_retry_applies_once(service, stripe):
    events = service.checkout("alice")
    document = events.completed()
    service.database.down = True
    reply = stripe.send(document)
    assert reply.status == 503 and reply.json()["error"]
    assert_nothing_stored(service)
    assert service.session(events.session_id).status is PaymentStatus.PENDING
    assert count(service.metrics, "failed_transient", "checkout.session.completed") == 1

    service.database.down = False  # the database is back; Stripe retries the same event
    again = stripe.send(document)
    assert again.status == 200 and again.json() == {
        "received": True, "outcome": "applied", "duplicate": False}
    assert stripe.send(document).json()["duplicate"] is True
    assert service.balance("alice") == 1200 and len(service.ledger()) == 1
    service.assert_consistent()


def test_an_unexpected_error_is_a_500_without_details_and_logged_with_the_event_id(caplog):
    async def broken(event: PaymentEvent) -> object:
        raise RuntimeError("connection string postgresql://billing:hunter2@db")

    metrics = Metrics()
    app = create_public_app(broken, [SECRET], metrics, now=lambda: float(NOW))  # type: ignore[arg-type]
    document = event("checkout.session.expired", {}, created=NOW)
    with caplog.at_level(logging.INFO, logger="billing.webhook"), RunningApp(app) as running:
        reply = StripeSender(running.port).send(document)
    assert reply.status == 500 and reply.json() == {"error": "internal error"}
    assert b"hunter2" not in reply.body
    [record] = [r for r in caplog.records if "failed_permanent" in r.getMessage()]
    assert record.event_id == document["id"] and record.exc_info
    assert count(metrics, "failed_permanent", "checkout.session.expired") == 1


def test_the_log_line_names_the_event_and_never_the_signature_or_secret(service, stripe, caplog):
    events = service.checkout("alice")
    document = events.completed()
    with caplog.at_level(logging.DEBUG):
        stripe.send(document)
    lines = [r for r in caplog.records if r.name == "billing.webhook"]
    [line] = lines
    assert document["id"] in line.getMessage() and "applied" in line.getMessage()
    assert (line.session_id, line.payment_id) == (events.session_id, events.payment_id)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert SECRET not in text and "v1=" not in text and "amount_total" not in text


def test_healthz_answers_without_touching_the_store(service, stripe):
    service.database.down = True
    opened = service.database.units_opened
    reply = request(stripe.port, "GET", "/healthz")
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    assert service.database.units_opened == opened


def test_the_public_app_needs_a_secret(service):
    with pytest.raises(ValueError, match="secret"):
        create_public_app(committed_by_group(service.apply_event, service.metrics), ["", ""],
                          service.metrics)


# -- the admin app --------------------------------------------------------------------------
def test_readyz_follows_the_readiness_check():
    state = {"ready": True}

    def ready() -> bool:
        if state["ready"] is None:
            raise ConnectionError("database unreachable")
        return bool(state["ready"])

    with RunningApp(create_admin_app(ready, Metrics())) as admin:
        assert request(admin.port, "GET", "/readyz").status == 200
        state["ready"] = False
        reply = request(admin.port, "GET", "/readyz")
        assert reply.status == 503 and reply.json() == {"status": "unavailable"}
        state["ready"] = None  # type: ignore[assignment]
        assert request(admin.port, "GET", "/readyz").status == 503
        state["ready"] = True
        assert request(admin.port, "GET", "/readyz").json() == {"status": "ready"}


def test_readyz_runs_the_check_off_the_event_loop():
    threads: list[str] = []

    def ready() -> bool:
        threads.append(threading.current_thread().name)
        return True

    with RunningApp(create_admin_app(ready, Metrics())) as admin:
        assert request(admin.port, "GET", "/readyz").status == 200
    assert threads and threads[0] != "aiohttp-test-server"


def test_metrics_expose_webhook_counts_after_a_delivery(service, stripe):
    stripe.send(service.checkout("alice").completed())
    stripe.send_raw(b"{}", None)
    with RunningApp(create_admin_app(lambda: True, service.metrics)) as admin:
        reply = request(admin.port, "GET", "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    assert (
        'billing_webhook_events_total{outcome="applied",type="checkout.session.completed"} 1.0'
        in text
    )
    assert 'billing_webhook_events_total{outcome="rejected_signature",type="unknown"} 1.0' in text
    assert "billing_webhook_latency_seconds_count 2.0" in text


def test_unhandled_types_share_one_metric_label(service, stripe):
    for event_type in ("customer.created", "invoice.paid"):
        reply = stripe.send(event(event_type, {"id": "x"}, created=NOW))
        assert reply.json() == {"received": True, "outcome": "ignored", "duplicate": False}
    assert count(service.metrics, "ignored", "other") == 2


def test_the_response_is_json_with_the_outcome(service, stripe):
    reply = stripe.send(service.checkout("alice").completed())
    assert reply.headers["Content-Type"].startswith("application/json")
    assert json.loads(reply.body) == {"received": True, "outcome": "applied", "duplicate": False}
