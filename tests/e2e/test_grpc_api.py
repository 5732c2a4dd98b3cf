"""Every RPC over a real port through the generated stubs, with auth on: results, errors and the
ErrorInfo reasons of DESIGN.md, the limits, deadlines, logs and metrics."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest

from billing.domain.payment import PaymentStatus
from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ADMIN_TOKEN,
    SHOP_TOKEN,
    bearer,
    create_request,
    http_get,
    http_post,
    reason_of,
    signed_checkout_completed,
)

ADMIN = bearer(ADMIN_TOKEN)
SHOP = bearer(SHOP_TOKEN)
C = grpc.StatusCode


def _key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def stub(service):
    with service.stub() as stub:
        yield stub


def _refused(call, request, metadata=ADMIN, **kwargs):
    with pytest.raises(grpc.RpcError) as failure:
        call(request, metadata=metadata, timeout=5, **kwargs)
    return reason_of(failure.value)


def _grant(stub, user, coins, key=None):
    return stub.GrantCoins(
        pb.GrantCoinsRequest(user_id=user, coins=coins, reason="welcome",
                             idempotency_key=key or _key()),
        metadata=ADMIN, timeout=5,
    )


def _paid_session(service, gateway, stub, user):
    """A COMPLETED purchase of coins_500 (550 coins): Stripe's paid event through the webhook."""
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    paid = gateway.pay(created.session_id)
    secret = service.settings.stripe_webhook_secrets[0].reveal()
    body, headers = signed_checkout_completed(secret, paid, event_id=f"evt_{_key()}")
    status, text = http_post(f"{service.http_base}/api/payment/webhook", body, headers)
    assert status == 200, text
    return created.session_id


# -- every RPC -------------------------------------------------------------------------------
def test_list_coin_packages_serves_the_catalog_with_server_side_prices(stub):
    response = stub.ListCoinPackages(pb.ListCoinPackagesRequest(), metadata=ADMIN, timeout=5)
    packages = {p.id: p for p in response.packages}
    assert packages["coins_1000"].coins == 1000 and packages["coins_1000"].bonus == 200
    assert packages["coins_1000"].price == pb.Money(currency="USD", amount_minor=9999)
    assert packages["coins_1000"].display_name


def test_create_checkout_session_is_idempotent_by_request_id(stub, gateway, user):
    first = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    again = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    assert first.session_id.startswith("cs_") and first.checkout_url.startswith("https://")
    assert first.expire_time.seconds > 0
    assert again == first
    assert sum(1 for s in gateway.sessions if s == first.session_id) == 1
    code, reason, _ = _refused(stub.CreateCheckoutSession,
                               create_request(user, package_id="coins_100"))
    assert (code, reason) == (C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


def test_get_payment_status_of_a_new_session_is_pending(stub, user):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    status = stub.GetPaymentStatus(
        pb.GetPaymentStatusRequest(user_id=user, session_id=created.session_id),
        metadata=ADMIN, timeout=5,
    )
    assert status.session_id == created.session_id
    assert status.status == pb.PAYMENT_STATUS_PENDING
    assert status.package_id == "coins_500"
    assert status.amount == pb.Money(currency="USD", amount_minor=499)
    assert (status.coins_added, status.new_balance, status.coins_refunded) == (0, 0, 0)


def test_a_paid_session_is_completed_and_credited_then_refunded(service, gateway, stub, user):
    session_id = _paid_session(service, gateway, stub, user)
    status = stub.GetPaymentStatus(
        pb.GetPaymentStatusRequest(user_id=user, session_id=session_id), metadata=ADMIN, timeout=5
    )
    assert status.status == pb.PAYMENT_STATUS_COMPLETED
    assert (status.coins_added, status.new_balance) == (550, 550)

    refund = pb.RefundPaymentRequest(user_id=user, session_id=session_id, reason="asked",
                                     request_id=_key())
    refunded = stub.RefundPayment(refund, metadata=ADMIN, timeout=5)
    assert refunded.status == pb.PAYMENT_STATUS_REFUNDED
    assert (refunded.coins_debited, refunded.new_balance) == (550, 0)
    assert stub.RefundPayment(refund, metadata=ADMIN, timeout=5) == refunded  # replayed
    assert gateway.refund_count() >= 1
    code, reason, _ = _refused(stub.RefundPayment, pb.RefundPaymentRequest(
        user_id=user, session_id=session_id, request_id=_key()))
    assert (code, reason) == (C.FAILED_PRECONDITION, "NOT_REFUNDABLE")


def test_cancel_checkout_session_cancels_an_unpaid_session(stub, user):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    request = pb.CancelCheckoutSessionRequest(user_id=user, session_id=created.session_id)
    assert stub.CancelCheckoutSession(request, metadata=ADMIN, timeout=5).status == (
        pb.PAYMENT_STATUS_CANCELLED)
    assert stub.CancelCheckoutSession(request, metadata=ADMIN, timeout=5).status == (
        pb.PAYMENT_STATUS_CANCELLED)


def test_cancel_of_a_paid_session_is_already_paid(service, gateway, stub, user):
    session_id = _paid_session(service, gateway, stub, user)
    code, reason, _ = _refused(stub.CancelCheckoutSession,
                               pb.CancelCheckoutSessionRequest(user_id=user, session_id=session_id))
    assert (code, reason) == (C.FAILED_PRECONDITION, "ALREADY_PAID")


def test_refund_of_spent_coins_is_coins_already_spent(service, gateway, stub, user):
    session_id = _paid_session(service, gateway, stub, user)
    stub.SpendCoins(pb.SpendCoinsRequest(user_id=user, coins=10, idempotency_key=_key()),
                    metadata=ADMIN, timeout=5)
    code, reason, _ = _refused(stub.RefundPayment, pb.RefundPaymentRequest(
        user_id=user, session_id=session_id, request_id=_key()))
    assert (code, reason) == (C.FAILED_PRECONDITION, "COINS_ALREADY_SPENT")


def test_grant_spend_balance_and_history(stub, user):
    granted = _grant(stub, user, 100)
    assert granted.balance == 100
    assert granted.transaction.type == pb.TRANSACTION_TYPE_GRANT
    assert granted.transaction.caller == "admin"
    spend = pb.SpendCoinsRequest(user_id=user, coins=30, reason="sword", idempotency_key=_key())
    spent = stub.SpendCoins(spend, metadata=SHOP, timeout=5)
    assert (spent.balance, spent.transaction.coins) == (70, -30)
    assert spent.transaction.type == pb.TRANSACTION_TYPE_USAGE
    assert spent.transaction.caller == "shop"
    assert stub.SpendCoins(spend, metadata=SHOP, timeout=5) == spent  # replayed, not re-spent
    balance = stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=SHOP, timeout=5)
    assert (balance.user_id, balance.balance) == (user, 70)

    history = stub.ListTransactions(pb.ListTransactionsRequest(user_id=user), metadata=ADMIN,
                                    timeout=5)
    assert [t.coins for t in history.transactions] == [-30, 100]  # newest first
    assert history.transactions[0].description == "sword"
    assert history.next_page_token == ""


def test_list_transactions_pages_newest_first(stub, user):
    for coins in range(1, 6):
        _grant(stub, user, coins)
    seen, token = [], ""
    while True:
        page = stub.ListTransactions(
            pb.ListTransactionsRequest(user_id=user, page_size=2, page_token=token),
            metadata=ADMIN, timeout=5,
        )
        seen += [t.coins for t in page.transactions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]


def test_spend_more_than_the_balance_is_insufficient_coins(stub, user):
    _grant(stub, user, 5)
    code, reason, _ = _refused(stub.SpendCoins, pb.SpendCoinsRequest(
        user_id=user, coins=6, idempotency_key=_key()))
    assert (code, reason) == (C.FAILED_PRECONDITION, "INSUFFICIENT_COINS")


def test_an_idempotency_key_reused_with_other_parameters_is_refused(stub, user):
    key = _key()
    _grant(stub, user, 5, key)
    code, reason, _ = _refused(stub.GrantCoins, pb.GrantCoinsRequest(
        user_id=user, coins=6, idempotency_key=key))
    assert (code, reason) == (C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


# -- ownership and lookups ------------------------------------------------------------------
def test_another_users_session_is_not_session_owner(stub, user):
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    intruder = f"{user}-b"
    for call, request in [
        (stub.GetPaymentStatus, pb.GetPaymentStatusRequest(user_id=intruder,
                                                           session_id=created.session_id)),
        (stub.CancelCheckoutSession, pb.CancelCheckoutSessionRequest(
            user_id=intruder, session_id=created.session_id)),
        (stub.RefundPayment, pb.RefundPaymentRequest(
            user_id=intruder, session_id=created.session_id, request_id=_key())),
    ]:
        code, reason, _ = _refused(call, request)
        assert (code, reason) == (C.PERMISSION_DENIED, "NOT_SESSION_OWNER")


def test_an_unknown_session_is_session_not_found(stub, user):
    code, reason, _ = _refused(stub.GetPaymentStatus, pb.GetPaymentStatusRequest(
        user_id=user, session_id="cs_test_nope"))
    assert (code, reason) == (C.NOT_FOUND, "SESSION_NOT_FOUND")


def test_an_unknown_package_is_unknown_package(stub, user):
    code, reason, _ = _refused(stub.CreateCheckoutSession,
                               create_request(user, package_id="coins_free"))
    assert (code, reason) == (C.INVALID_ARGUMENT, "UNKNOWN_PACKAGE")


def test_a_forged_page_token_is_invalid_page_token(stub, user):
    code, reason, _ = _refused(stub.ListTransactions, pb.ListTransactionsRequest(
        user_id=user, page_token="not-a-token"))
    assert (code, reason) == (C.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


# -- limits: INVALID_ARGUMENT, INVALID_FIELD naming the field, nothing changed -------------
LONG_URL = "https://game.example/" + "x" * 2048
LIMITS = [
    ("CreateCheckoutSession", {"user_id": ""}, "user_id"),
    ("CreateCheckoutSession", {"user_id": "u" * 129}, "user_id"),
    ("CreateCheckoutSession", {"user_id": "bad\nid"}, "user_id"),
    ("CreateCheckoutSession", {"package_id": ""}, "package_id"),
    ("CreateCheckoutSession", {"success_url": "ftp://x.example/"}, "success_url"),
    ("CreateCheckoutSession", {"success_url": LONG_URL}, "success_url"),
    ("CreateCheckoutSession", {"cancel_url": "not a url"}, "cancel_url"),
    ("CreateCheckoutSession", {"request_id": ""}, "request_id"),
    ("CreateCheckoutSession", {"request_id": "r" * 65}, "request_id"),
    ("CreateCheckoutSession", {"request_id": "clé"}, "request_id"),
    ("GetPaymentStatus", {"session_id": ""}, "session_id"),
    ("GetPaymentStatus", {"session_id": "s" * 129}, "session_id"),
    ("CancelCheckoutSession", {"user_id": ""}, "user_id"),
    ("RefundPayment", {"reason": "r" * 501}, "reason"),
    ("RefundPayment", {"request_id": ""}, "request_id"),
    ("GetBalance", {"user_id": ""}, "user_id"),
    ("GetBalance", {"user_id": "u" * 129}, "user_id"),
    ("SpendCoins", {"coins": 0}, "coins"),
    ("SpendCoins", {"coins": -5}, "coins"),
    ("SpendCoins", {"coins": 10_000_001}, "coins"),
    ("SpendCoins", {"reason": "r" * 501}, "reason"),
    ("SpendCoins", {"idempotency_key": ""}, "idempotency_key"),
    ("SpendCoins", {"idempotency_key": "k" * 65}, "idempotency_key"),
    ("GrantCoins", {"coins": 0}, "coins"),
    ("GrantCoins", {"coins": 2**62}, "coins"),
    ("GrantCoins", {"idempotency_key": "tab\tkey"}, "idempotency_key"),
    ("ListTransactions", {"page_size": -1}, "page_size"),
    ("ListTransactions", {"page_size": 501}, "page_size"),
    ("ListTransactions", {"user_id": ""}, "user_id"),
]
VALID = {
    "CreateCheckoutSession": lambda u: {
        "user_id": u, "package_id": "coins_100", "success_url": "https://g.example/ok",
        "cancel_url": "https://g.example/no", "request_id": _key()},
    "GetPaymentStatus": lambda u: {"user_id": u, "session_id": "cs_test_x"},
    "CancelCheckoutSession": lambda u: {"user_id": u, "session_id": "cs_test_x"},
    "RefundPayment": lambda u: {"user_id": u, "session_id": "cs_test_x", "request_id": _key()},
    "GetBalance": lambda u: {"user_id": u},
    "SpendCoins": lambda u: {"user_id": u, "coins": 1, "idempotency_key": _key()},
    "GrantCoins": lambda u: {"user_id": u, "coins": 1, "idempotency_key": _key()},
    "ListTransactions": lambda u: {"user_id": u},
}


@pytest.mark.parametrize(("rpc", "bad", "field"), LIMITS,
                         ids=[f"{rpc}-{field}-{i}" for i, (rpc, _, field) in enumerate(LIMITS)])
def test_each_limit_is_invalid_field_naming_the_field(service, stub, user, rpc, bad, field):
    _grant(stub, user, 1)
    fields = {**VALID[rpc](user), **bad}
    request = getattr(pb, f"{rpc}Request")(**fields)
    code, reason, metadata = _refused(getattr(stub, rpc), request)
    assert (code, reason, metadata) == (C.INVALID_ARGUMENT, "INVALID_FIELD", {"field": field})
    history = stub.ListTransactions(pb.ListTransactionsRequest(user_id=user), metadata=ADMIN,
                                    timeout=5)
    assert len(history.transactions) == 1  # nothing changed


def test_max_coins_itself_is_accepted(stub, user):
    assert _grant(stub, user, 10_000_000).balance == 10_000_000


# -- auth ------------------------------------------------------------------------------------
def test_a_call_without_a_token_is_missing_token(stub, user):
    code, reason, _ = _refused(stub.GetBalance, pb.GetBalanceRequest(user_id=user), metadata=())
    assert (code, reason) == (C.UNAUTHENTICATED, "MISSING_TOKEN")


def test_a_call_with_a_wrong_token_is_invalid_token(stub, user):
    code, reason, _ = _refused(stub.GetBalance, pb.GetBalanceRequest(user_id=user),
                               metadata=bearer("not-the-token"))
    assert (code, reason) == (C.UNAUTHENTICATED, "INVALID_TOKEN")


def test_a_token_outside_its_rpcs_is_rpc_not_allowed_and_grants_nothing(stub, user):
    code, reason, _ = _refused(stub.GrantCoins, pb.GrantCoinsRequest(
        user_id=user, coins=1000, idempotency_key=_key()), metadata=SHOP)
    assert (code, reason) == (C.PERMISSION_DENIED, "RPC_NOT_ALLOWED")
    assert stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=SHOP,
                           timeout=5).balance == 0


def test_auth_is_checked_before_validation(stub):
    code, reason, _ = _refused(stub.GetBalance, pb.GetBalanceRequest(user_id=""), metadata=())
    assert (code, reason) == (C.UNAUTHENTICATED, "MISSING_TOKEN")


def test_health_needs_no_token(service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(service.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "billing.v1.BillingService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


# -- failures --------------------------------------------------------------------------------
def test_stripe_unreachable_is_unavailable_and_a_retry_with_the_same_request_id_works(
    stub, gateway, user
):
    gateway.unavailable_calls = 1
    code, reason, _ = _refused(stub.CreateCheckoutSession, create_request(user))
    assert (code, reason) == (C.UNAVAILABLE, "GATEWAY_UNAVAILABLE")
    created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    assert created.session_id.startswith("cs_")


def test_a_bug_is_internal_with_no_detail_and_is_logged(stub, gateway, user, caplog):
    gateway.crash = RuntimeError("boom with sk_test_leakme and a stack")
    try:
        with pytest.raises(grpc.RpcError) as failure:
            stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=5)
    finally:
        gateway.crash = None
    assert failure.value.code() is C.INTERNAL
    assert failure.value.details() == "internal error"
    assert "leakme" not in str(failure.value.trailing_metadata())
    code, reason, _ = reason_of(failure.value)
    assert reason == "INTERNAL"
    errors = [r for r in caplog.records if r.name == "billing.rpc" and r.levelno == logging.ERROR]
    assert errors and errors[-1].exc_info is not None


def test_a_call_past_its_deadline_is_deadline_exceeded(stub, gateway, user):
    gateway.delay_s = 1.0
    try:
        with pytest.raises(grpc.RpcError) as failure:
            stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=0.2)
    finally:
        gateway.delay_s = 0.0
    assert failure.value.code() is C.DEADLINE_EXCEEDED


# -- observability ---------------------------------------------------------------------------
def test_one_log_line_per_call_with_its_ids_and_never_the_token(stub, user, caplog):
    caplog.set_level(logging.INFO, logger="billing.rpc")
    key = _key()
    _refused(stub.SpendCoins, pb.SpendCoinsRequest(user_id=user, coins=1, idempotency_key=key),
             metadata=SHOP)
    lines = [r for r in caplog.records if r.name == "billing.rpc"
             and getattr(r, "idempotency_key", "") == key]
    assert len(lines) == 1
    line = lines[0]
    assert (line.method, line.code, line.caller, line.user_id) == (
        "SpendCoins", "FAILED_PRECONDITION", "shop", user)
    assert line.reason == "INSUFFICIENT_COINS"
    assert line.duration_ms >= 0
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert SHOP_TOKEN not in everything and ADMIN_TOKEN not in everything


def test_auth_refusals_are_all_counted_but_only_a_few_logged(service, stub, user, caplog):
    caplog.set_level(logging.INFO, logger="billing.rpc")
    metric = 'billing_rpc_total{code="UNAUTHENTICATED",method="GetBalance"} '

    def refused_so_far() -> float:
        text = http_get(f"{service.admin_base}/metrics")[1]
        return float(text.split(metric, 1)[1].split()[0]) if metric in text else 0.0

    before = refused_so_far()
    for _ in range(100):
        _refused(stub.GetBalance, pb.GetBalanceRequest(user_id=user),
                 metadata=bearer("guessed-token-000"))
    lines = [r for r in caplog.records if r.name == "billing.rpc" and r.code == "UNAUTHENTICATED"]
    assert len(lines) <= 5  # per reason and minute; the rest are summarized
    assert refused_so_far() - before == 100


def test_rpc_metrics_are_on_the_admin_port(service, stub, user):
    stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=ADMIN, timeout=5)
    status, text = http_get(f"{service.admin_base}/metrics")
    assert status == 200
    assert 'billing_rpc_total{code="OK",method="GetBalance"}' in text
    assert 'billing_rpc_latency_seconds_count{method="GetBalance"}' in text
    assert http_get(f"{service.http_base}/metrics")[0] == 404  # never on the public port


def test_readiness_and_liveness(service):
    assert http_get(f"{service.admin_base}/readyz")[0] == 200
    assert http_get(f"{service.http_base}/healthz")[0] == 200


def test_domain_status_values_round_trip(stub, user):
    # Every domain status has a wire value (the servicer's table is complete).
    from billing.adapters.grpc_api.codec import payment_status

    assert {payment_status(s) for s in PaymentStatus} == set(pb.PaymentStatus.values()) - {0}
