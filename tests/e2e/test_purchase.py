"""The whole purchase over real ports, as `billing serve` runs it in fake mode: the fake Stripe
in-process, its checkout page paid over HTTP, its signed webhook credited — on SQLite and on
Postgres."""

from __future__ import annotations

import uuid

import pytest

from billing.v1 import billing_pb2 as pb
from tests.e2e.harness import (
    ADMIN_TOKEN,
    API_TOKENS,
    bearer,
    create_request,
    http_get,
    pay_on_fake_checkout_page,
    service_env,
    start_service,
    wait_for,
)

ADMIN = bearer(ADMIN_TOKEN)


def _pay_on_the_checkout_page(checkout_url: str, card: str) -> int:
    assert "4.99" in http_get(checkout_url)[1]  # coins_500's price, on the page
    return pay_on_fake_checkout_page(checkout_url, card)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'billing.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_a_customer_buys_coins_end_to_end(tmp_path, database_url):
    env = service_env(tmp_path, BILLING_DATABASE_URL=database_url, BILLING_API_TOKENS=API_TOKENS)
    service = start_service(env)  # fake mode: the real SDK against the in-process fake Stripe
    user = f"buyer-{uuid.uuid4().hex[:8]}"
    try:
        with service.stub() as stub:
            created = stub.CreateCheckoutSession(create_request(user), metadata=ADMIN, timeout=10)
            assert created.checkout_url.startswith(
                f"http://127.0.0.1:{service.settings.fake_stripe_port}/")
            status = pb.GetPaymentStatusRequest(user_id=user, session_id=created.session_id)
            assert stub.GetPaymentStatus(status, metadata=ADMIN, timeout=5).status == (
                pb.PAYMENT_STATUS_PENDING)

            assert _pay_on_the_checkout_page(created.checkout_url, "4000000000000002") == 402
            assert stub.GetPaymentStatus(status, metadata=ADMIN, timeout=5).status == (
                pb.PAYMENT_STATUS_PENDING)  # a declined card leaves the session open
            assert _pay_on_the_checkout_page(created.checkout_url, "4242424242424242") == 200

            paid = wait_for(
                lambda: (lambda r: r if r.status == pb.PAYMENT_STATUS_COMPLETED else None)(
                    stub.GetPaymentStatus(status, metadata=ADMIN, timeout=5)),
                10, "the webhook to credit the purchase",
            )
            assert (paid.coins_added, paid.new_balance) == (550, 550)
            balance = stub.GetBalance(pb.GetBalanceRequest(user_id=user), metadata=ADMIN,
                                      timeout=5)
            assert balance.balance == 550

            refund = stub.RefundPayment(pb.RefundPaymentRequest(
                user_id=user, session_id=created.session_id, reason="changed my mind",
                request_id=f"refund-{user}"), metadata=ADMIN, timeout=10)
            assert refund.status == pb.PAYMENT_STATUS_REFUNDED
            assert (refund.coins_debited, refund.new_balance) == (550, 0)
            history = stub.ListTransactions(pb.ListTransactionsRequest(user_id=user),
                                            metadata=ADMIN, timeout=5)
            assert [(t.type, t.coins) for t in history.transactions] == [
                (pb.TRANSACTION_TYPE_REFUND, -550), (pb.TRANSACTION_TYPE_PURCHASE, 550)]
            assert history.transactions[0].caller == "admin"
    finally:
        assert service.stop() == 0
