"""No log line holds a webhook secret, an API key or a bearer token (issue 6, section 5).

`billing serve` runs as production runs it: a subprocess, JSON lines on stderr (to a file), DEBUG
level, known canary secrets, fake mode with STRIPE_API_BASE naming a fake Stripe that is down (so
the SDK, keyed `sk_test_fake`, fails to reach it). The test drives an error of every kind — auth
(missing, wrong, malformed, outside its RPCs), every domain refusal, the gateway down, the webhook
refused (bad signature, tampered, stale, missing, 413) and accepted (unmatched, ignored,
rejected), the database unreachable at start — then reads every line the process wrote.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.logging_setup import configure_logging
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.e2e.harness import (
    ADMIN_TOKEN,
    ControllableGateway,
    RunningService,
    bearer,
    create_request,
    free_port,
    reason_of,
    service_env,
    wait_for,
)
from tests.integration.webhook.harness import request as http_request
from tests.integration.webhook.stripe_events import CheckoutEvents, encode, stripe_signature

BILLING = str(Path(sys.executable).parent / "billing")
WEBHOOK = "/api/payment/webhook"
WEBHOOK_SECRET = "whsec_test_secret_canary_123"
SVC_TOKEN = "tok_canary_456"
LIMITED_TOKEN = "tok_canary_789"
WRONG_TOKEN = "tok_wrong_canary_000"
DB_PASSWORD = "pw_canary_321"
FAKE_STRIPE_KEY = "sk_test_fake"
CANARIES = (WEBHOOK_SECRET, SVC_TOKEN, LIMITED_TOKEN, WRONG_TOKEN, DB_PASSWORD, FAKE_STRIPE_KEY,
            "whsec_", "Bearer ")
C = grpc.StatusCode


def _environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The process environment without the caller's BILLING_/STRIPE_ variables, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_"))}
    env.update(service_env(tmp_path))
    env.update(overrides)
    return env


def _serving(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=0.5)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.env['BILLING_GRPC_PORT']}"

    @property
    def http_port(self) -> int:
        return int(self.env["BILLING_HTTP_PORT"])

    def stop(self) -> list[str]:
        """SIGTERM, wait, and every line the process wrote (stdout and stderr)."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0
        return self.log_path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    stripe_down = free_port()  # nothing listens here: the "external" fake Stripe is down
    env = _environment(
        tmp_path,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        BILLING_API_TOKENS=f"svc:{SVC_TOKEN},limited:{LIMITED_TOKEN}:GetBalance",
        BILLING_LOG_LEVEL="DEBUG",
        BILLING_LOG_FORMAT="json",
        STRIPE_API_BASE=f"http://127.0.0.1:{stripe_down}",
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([BILLING, "serve"], cwd=tmp_path, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    running = Serve(process, env, log_path)
    try:
        wait_for(lambda: _serving(running.target) or process.poll() is not None, 20,
                 "billing serve to be SERVING")
        assert process.poll() is None, log_path.read_text()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- driving every kind of error ------------------------------------------------------------------
def _key() -> str:
    return uuid.uuid4().hex


def _refused(call: Any, request: Any, metadata: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, metadata=metadata, timeout=30)
    code, reason, _ = reason_of(failure.value)
    return code, reason


@dataclass(frozen=True)
class Expected:
    """An RPC log line the drive must have produced."""

    method: str
    code: str
    caller: str
    reason: str = ""
    user_id: str = ""


def drive_grpc(target: str, user: str) -> list[Expected]:
    svc, limited = bearer(SVC_TOKEN), bearer(LIMITED_TOKEN)
    expected: list[Expected] = []
    with grpc.insecure_channel(target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        balance = pb.GetBalanceRequest(user_id=user)
        for metadata, reason in [
            ((), "MISSING_TOKEN"),
            (bearer(WRONG_TOKEN), "INVALID_TOKEN"),
            ((("authorization", SVC_TOKEN),), "INVALID_TOKEN"),  # the right token, no scheme
            ((("authorization", f"Basic {SVC_TOKEN}"),), "INVALID_TOKEN"),
            ((("authorization", f"bearer  {WRONG_TOKEN}  "),), "INVALID_TOKEN"),
        ]:
            assert _refused(stub.GetBalance, balance, metadata) == (C.UNAUTHENTICATED, reason)
            expected.append(Expected("GetBalance", "UNAUTHENTICATED", "anonymous", reason, user))
        assert stub.GetBalance(balance, metadata=limited, timeout=10).balance == 0
        expected.append(Expected("GetBalance", "OK", "limited", "", user))
        spend = pb.SpendCoinsRequest(user_id=user, coins=5, reason="x", idempotency_key=_key())
        assert _refused(stub.SpendCoins, spend, limited) == (C.PERMISSION_DENIED,
                                                             "RPC_NOT_ALLOWED")
        expected.append(Expected("SpendCoins", "PERMISSION_DENIED", "limited", "RPC_NOT_ALLOWED"))

        assert _refused(stub.GetBalance, pb.GetBalanceRequest(user_id=""), svc) == (
            C.INVALID_ARGUMENT, "INVALID_FIELD")
        expected.append(Expected("GetBalance", "INVALID_ARGUMENT", "svc", "INVALID_FIELD"))
        missing = pb.GetPaymentStatusRequest(user_id=user, session_id="cs_test_nope")
        assert _refused(stub.GetPaymentStatus, missing, svc) == (C.NOT_FOUND,
                                                                 "SESSION_NOT_FOUND")
        expected.append(Expected("GetPaymentStatus", "NOT_FOUND", "svc", "SESSION_NOT_FOUND",
                                 user))
        grant_key = _key()
        stub.GrantCoins(pb.GrantCoinsRequest(user_id=user, coins=10, reason="welcome",
                                             idempotency_key=grant_key), metadata=svc, timeout=10)
        expected.append(Expected("GrantCoins", "OK", "svc", "", user))
        reused = pb.GrantCoinsRequest(user_id=user, coins=11, reason="welcome",
                                      idempotency_key=grant_key)
        assert _refused(stub.GrantCoins, reused, svc) == (C.ALREADY_EXISTS,
                                                          "IDEMPOTENCY_KEY_REUSED")
        expected.append(Expected("GrantCoins", "ALREADY_EXISTS", "svc", "IDEMPOTENCY_KEY_REUSED",
                                 user))
        assert _refused(stub.SpendCoins, pb.SpendCoinsRequest(
            user_id=user, coins=100, reason="sword", idempotency_key=_key()), svc) == (
            C.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
        expected.append(Expected("SpendCoins", "FAILED_PRECONDITION", "svc", "INSUFFICIENT_COINS",
                                 user))
        # The SDK (key sk_test_fake, "Authorization: Bearer sk_test_fake") cannot reach Stripe.
        assert _refused(stub.CreateCheckoutSession, create_request(user), svc) == (
            C.UNAVAILABLE, "GATEWAY_UNAVAILABLE")
        expected.append(Expected("CreateCheckoutSession", "UNAVAILABLE", "svc",
                                 "GATEWAY_UNAVAILABLE", user))
    return expected


def drive_webhook(port: int, user: str) -> dict[str, str]:
    """Deliveries of every kind; the event ids the log must name, by outcome."""
    now = int(time.time())
    events = CheckoutEvents.for_session(f"cs_test_{_key()[:12]}", f"pay_{_key()[:12]}", user,
                                        499, "usd", now)

    def send(body: bytes, signature: str | None, **headers: str) -> tuple[int, Any]:
        all_headers = {"Content-Type": "application/json", **headers}
        if signature is not None:
            all_headers["Stripe-Signature"] = signature
        reply = http_request(port, "POST", WEBHOOK, body, all_headers)
        return reply.status, reply.json()

    def sign(body: bytes, secret: str = WEBHOOK_SECRET, at: int = now) -> str:
        return stripe_signature(body, secret, at)

    body = encode(events.completed())
    assert send(body, sign(body, "whsec_wrong_canary_999"))[0] == 400  # bad signature
    assert send(body.replace(b'"paid"', b'"PAID"'), sign(body))[0] == 400  # tampered
    assert send(body, sign(body, at=now - 3600))[0] == 400  # stale
    assert send(body, None)[0] == 400  # missing
    assert send(body, "t=abc,v1=" + WEBHOOK_SECRET)[0] == 400  # garbled, with a secret in it
    assert send(b"{not json", sign(b"{not json"))[0] == 400  # signed garbage
    big = events.completed()
    big["data"]["object"]["metadata"]["padding"] = "x" * (300 * 1024)
    assert send(encode(big), sign(encode(big)))[0] == 413

    seen: dict[str, str] = {}
    unmatched = events.completed()  # for a session this service never created
    status, answer = send(encode(unmatched), sign(encode(unmatched)))
    assert (status, answer["outcome"]) == (200, "unmatched")
    seen[unmatched["id"]] = "unmatched"
    ignored = dict(events.completed(), type="customer.created", id=f"evt_{_key()[:16]}")
    status, answer = send(encode(ignored), sign(encode(ignored)))
    assert (status, answer["outcome"]) == (200, "ignored")
    seen[ignored["id"]] = "ignored"
    rejected = events.completed(currency="xyz")
    status, answer = send(encode(rejected), sign(encode(rejected)))
    assert (status, answer["outcome"]) == (200, "rejected")
    seen[rejected["id"]] = "rejected"
    return seen


# -- reading the log -----------------------------------------------------------------------------
def assert_no_secret(lines: list[str]) -> None:
    for number, line in enumerate(lines, 1):
        for canary in CANARIES:
            assert canary not in line, f"line {number} holds {canary!r}: {line}"
        assert "bearer " not in line.lower() or "[REDACTED]" in line, line


def parse_json_lines(lines: list[str]) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
        parsed.append(record)
    return parsed


def test_no_log_line_of_billing_serve_holds_a_secret_whatever_fails(serve):
    user = f"user-{_key()[:10]}"
    expected = drive_grpc(serve.target, user)
    event_ids = drive_webhook(serve.http_port, user)
    raw = serve.stop()

    assert raw, "billing serve wrote nothing"
    assert_no_secret(raw)
    records = parse_json_lines(raw)
    assert {r["level"] for r in records} >= {"DEBUG", "INFO", "WARNING"}  # DEBUG really on

    webhook_lines = [r for r in records if r["logger"] == "billing.webhook"]
    refused = [r for r in webhook_lines if r.get("outcome") in ("rejected_signature", "rejected")
               and r.get("status") in (400, 413)]
    assert len(refused) >= 7 and {r["status"] for r in refused} == {400, 413}
    for event_id, outcome in event_ids.items():
        lines = [r for r in webhook_lines if r.get("event_id") == event_id]
        assert [r["outcome"] for r in lines] == [outcome], (event_id, lines)
        assert lines[0]["event_type"] and "session_id" in lines[0]

    rpc_lines = [r for r in records if r["logger"] == "billing.rpc"]
    for line in rpc_lines:  # every RPC line names the call, its outcome and the caller
        assert {"method", "code", "caller", "duration_ms"} <= set(line), line
    missing = []
    for want in expected:
        if not [r for r in rpc_lines if r["method"] == want.method and r["code"] == want.code
                and r["caller"] == want.caller and r.get("reason", "") == want.reason
                and (not want.user_id or r.get("user_id") == want.user_id)]:
            near = [r for r in rpc_lines if r["method"] == want.method
                    and r["code"] == want.code and r.get("reason", "") == want.reason]
            missing.append(f"{want}; logged as {near}")
    assert not missing, "RPC log lines missing or wrong:\n" + "\n".join(missing)


def test_no_secret_in_the_log_when_the_database_is_unreachable(tmp_path):
    """The database down at start (Postgres URL with a password, nothing listening): serve and
    audit both fail with a log line that names the problem, not the password."""
    url = f"postgresql+psycopg2://billing:{DB_PASSWORD}@127.0.0.1:{free_port()}/billing"
    env = _environment(tmp_path, BILLING_DATABASE_URL=url, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                       BILLING_API_TOKENS=f"svc:{SVC_TOKEN}", BILLING_LOG_LEVEL="DEBUG")
    serve = subprocess.run([BILLING, "serve"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert serve.returncode == 1, serve.stderr
    lines = (serve.stdout + serve.stderr).splitlines()
    assert_no_secret(lines)
    records = parse_json_lines(lines)
    assert any("cannot start" in r["message"] for r in records), records
    assert any("127.0.0.1" in line for line in lines)  # says where it looked
    audit = subprocess.run([BILLING, "audit"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert audit.returncode == 1
    assert_no_secret((audit.stdout + audit.stderr).splitlines())


# -- a bug (INTERNAL), in-process: the only way to make the service fail like a bug -------------
@pytest.fixture
def production_logging() -> Iterator[io.StringIO]:
    """The root logger configured exactly as `billing serve` does (DEBUG, JSON, redacting),
    writing to a buffer; pytest's own handlers and levels are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiohttp.access", "alembic",
                                                               "stripe")}
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)


def test_a_bug_is_logged_with_its_traceback_and_without_secrets(
    service: RunningService, gateway: ControllableGateway, production_logging: io.StringIO
):
    user = f"user-{_key()[:10]}"
    gateway.crash = RuntimeError(
        f"boom: Authorization: Bearer {FAKE_STRIPE_KEY}, secret {WEBHOOK_SECRET}")
    try:
        with service.stub() as stub, pytest.raises(grpc.RpcError) as failure:
            stub.CreateCheckoutSession(create_request(user), metadata=bearer(ADMIN_TOKEN),
                                       timeout=10)
    finally:
        gateway.crash = None
    assert reason_of(failure.value)[:2] == (C.INTERNAL, "INTERNAL")
    lines = production_logging.getvalue().splitlines()
    assert_no_secret(lines)
    records = parse_json_lines(lines)
    errors = [r for r in records if r["logger"] == "billing.rpc" and r["level"] == "ERROR"]
    assert len(errors) == 1, records
    line = errors[0]
    assert (line["method"], line["code"], line["caller"], line["user_id"]) == (
        "CreateCheckoutSession", "INTERNAL", "admin", user)
    # The traceback is what an operator needs to fix the bug (redacted, but there).
    assert "Traceback" in line.get("exception", "") and "RuntimeError" in line["exception"], (
        f"the INTERNAL line lost its traceback: exception={line.get('exception')!r}")
