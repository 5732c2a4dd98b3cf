"""The public port under abuse (issue 13), against the service as `billing serve` runs it: a flood
of forged webhooks and wrong tokens is counted in full and narrated in a few lines (then one
summary per reason, written at the latest on shutdown) while real webhooks keep every line; a
slow sender is cut off by the head deadline; the allowlist and the trusted proxy come from the
environment."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Mapping

import grpc
import pytest

from billing.logging_setup import QUIET_LOGGERS
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ADMIN_TOKEN,
    API_TOKENS,
    ControllableGateway,
    RunningService,
    bearer,
    create_request,
    http_get,
    http_post,
    service_env,
    signed_checkout_completed,
    start_service,
)

WEBHOOK = "/api/payment/webhook"
FORGED = 5000
SENDERS = 8
WRONG_TOKENS = 300
MAX_LINES = 50


@pytest.fixture(autouse=True)
def production_log_levels():
    """The loggers `billing serve` quiets (configure_logging), quiet here too."""
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _flood(port: int, count: int, body: bytes, headers: Mapping[str, str]) -> Counter[int]:
    """`count` POSTs from SENDERS keep-alive connections at once; the statuses answered."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def send(share: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(share):
                connection.request("POST", WEBHOOK, body, dict(headers))
                reply = connection.getresponse()
                reply.read()
                with lock:
                    statuses[reply.status] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(count // SENDERS,)) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _metric(service: RunningService, line_start: str) -> float:
    status, text = http_get(f"{service.admin_base}/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _paid_event(service: RunningService, gateway: ControllableGateway, stub: object
                ) -> tuple[str, bytes, dict[str, str]]:
    user = f"buyer-{uuid.uuid4().hex[:8]}"
    created = stub.CreateCheckoutSession(  # type: ignore[attr-defined]
        create_request(user), metadata=bearer(ADMIN_TOKEN), timeout=5)
    event_id = f"evt_{uuid.uuid4().hex}"
    secret = service.settings.stripe_webhook_secrets[0].reveal()
    body, headers = signed_checkout_completed(secret, gateway.pay(created.session_id),
                                              event_id=event_id)
    return event_id, body, headers


def _start(tmp_path, gateway: ControllableGateway, **env: str) -> RunningService:
    return start_service(service_env(
        tmp_path, BILLING_API_TOKENS=API_TOKENS, STRIPE_API_BASE="http://127.0.0.1:9", **env),
        gateway=gateway)


def test_a_flood_of_forged_webhooks_and_wrong_tokens_is_counted_not_narrated(
    tmp_path, gateway, caplog
):
    service = _start(tmp_path, gateway)
    stopped = False
    try:
        with service.stub() as stub:
            real = [_paid_event(service, gateway, stub) for _ in range(3)]
            forged_body = real[0][1]
            forged = {"Content-Type": "application/json",
                      "Stripe-Signature": "t=1767268800,v1=" + "0" * 64}
            with caplog.at_level(logging.INFO):
                caplog.clear()
                statuses = _flood(service.settings.http_port, FORGED, forged_body, forged)
                for _, body, headers in real:  # Stripe's own, while the refusal window is full
                    assert http_post(service.http_base + WEBHOOK, body, headers)[0] == 200
                codes: Counter[grpc.StatusCode] = Counter()
                for n in range(WRONG_TOKENS):
                    metadata = bearer("not-a-token-000") if n % 2 else ()
                    with pytest.raises(grpc.RpcError) as refused:
                        stub.GetBalance(pb.GetBalanceRequest(user_id="u"), metadata=metadata,
                                        timeout=5)
                    codes[refused.value.code()] += 1
                during = list(caplog.records)
        assert statuses == {400: FORGED}
        assert codes == {grpc.StatusCode.UNAUTHENTICATED: WRONG_TOKENS}
        assert len(during) < MAX_LINES, "\n".join(r.getMessage() for r in during)
        for event_id, _, _ in real:  # a real webhook's line is never held back
            assert any(event_id in r.getMessage() and "applied" in r.getMessage()
                       for r in during)
        assert _metric(service, 'billing_webhook_events_total{outcome="rejected_signature"'
                       ) == FORGED
        assert _metric(service, 'billing_rpc_total{code="UNAUTHENTICATED",method="GetBalance"}'
                       ) == WRONG_TOKENS
        assert _metric(service, "billing_webhook_refusals_slowed_total") > 0  # and it was paced

        with caplog.at_level(logging.INFO):
            caplog.clear()
            assert service.stop() == 0
            stopped = True
            final = list(caplog.records)
    finally:
        if not stopped:
            service.stop()
    # Every refusal is in a line or a summary (written each minute, and on the way out).
    records = during + final
    for reason, count in (("rejected_signature", FORGED), ("MISSING_TOKEN", WRONG_TOKENS // 2),
                          ("INVALID_TOKEN", WRONG_TOKENS // 2)):
        shown = sum(getattr(r, "outcome", getattr(r, "reason", None)) == reason
                    and "more refused" not in r.getMessage() for r in records)
        summaries = [r for r in records if getattr(r, "suppressed", 0)
                     and r.reason == reason]
        assert summaries, f"no summary for {reason}"
        assert shown + sum(r.suppressed for r in summaries) == count, reason
        assert all(r.top_remotes == {"127.0.0.1": r.suppressed} for r in summaries)
    assert any(re.fullmatch(r"\d+ more refused in the last .*, reason rejected_signature, "
                            r"top remote addresses 127\.0\.0\.1 \(\d+\)", r.getMessage())
               for r in final)


def test_a_slow_sender_is_cut_off_by_the_configured_head_deadline(tmp_path, gateway):
    service = _start(tmp_path, gateway, BILLING_WEBHOOK_HEADER_TIMEOUT_S="0.3")
    try:
        with socket.create_connection(("127.0.0.1", service.settings.http_port), timeout=10
                                      ) as sock:
            sock.sendall(b"POST /api/payment/webhook HTTP/1.1\r\nHost: billing\r\nX-Slow: ")
            assert sock.recv(1024) == b""  # closed by the service (else: a 10 s timeout)
        assert _metric(service, 'billing_webhook_connections_closed_total{reason="header_timeout"'
                       ) == 1
    finally:
        assert service.stop() == 0


def test_the_allowlist_and_the_trusted_proxy_come_from_the_environment(tmp_path, gateway):
    service = _start(tmp_path, gateway, BILLING_WEBHOOK_ALLOWED_IPS="203.0.113.0/24",
                     BILLING_WEBHOOK_TRUSTED_PROXIES="127.0.0.1")
    try:
        with service.stub() as stub:
            _, body, headers = _paid_event(service, gateway, stub)
        url = service.http_base + WEBHOOK
        assert http_post(url, body, headers)[0] == 403  # the proxy itself is not Stripe
        assert http_post(url, body, {**headers, "X-Forwarded-For": "198.51.100.4"})[0] == 403
        assert http_post(url, body, {**headers, "X-Forwarded-For": "203.0.113.9"})[0] == 200
        assert http_get(service.http_base + "/healthz")[0] == 200
        assert _metric(service, 'billing_webhook_events_total{outcome="rejected_source"') == 2
    finally:
        assert service.stop() == 0
