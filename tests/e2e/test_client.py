"""billing.client against the running service: domain results, reasons on errors, retries."""

from __future__ import annotations

import grpc
import pytest

from billing.client import BillingClient, BillingClientError
from billing.domain.ledger import TransactionType
from billing.domain.money import Money
from billing.domain.payment import PaymentStatus
from tests.e2e.harness import ADMIN_TOKEN, CANCEL_URL, SHOP_TOKEN, SUCCESS_URL


@pytest.fixture
def client(service):
    with BillingClient(service.grpc_target, token=ADMIN_TOKEN) as client:
        yield client


def test_results_are_domain_values(client, user):
    packages = {p.id: p for p in client.list_coin_packages()}
    assert packages["coins_1000"].price == Money("USD", 9999)

    granted = client.grant_coins(user, 40, "welcome")
    assert granted.balance == 40
    assert granted.transaction.type is TransactionType.GRANT
    assert granted.transaction.caller == "admin"
    spent = client.spend_coins(user, 15, "potion", idempotency_key="potion-1")
    assert (spent.balance, spent.transaction.coins) == (25, -15)
    assert client.spend_coins(user, 15, "potion", idempotency_key="potion-1") == spent
    assert client.get_balance(user) == 25
    assert [t.coins for t in client.iter_transactions(user, page_size=1)] == [-15, 40]

    checkout = client.create_checkout_session(user, "coins_100", SUCCESS_URL, CANCEL_URL)
    assert checkout.session_id.startswith("cs_") and checkout.request_id
    assert checkout.expires_at.tzinfo is not None
    info = client.get_payment_status(user, checkout.session_id)
    assert (info.status, info.amount, info.package_id) == (
        PaymentStatus.PENDING, Money("USD", 99), "coins_100")
    assert client.cancel_checkout_session(user, checkout.session_id) is PaymentStatus.CANCELLED


def test_errors_carry_the_code_and_reason(client, user):
    with pytest.raises(BillingClientError) as failure:
        client.spend_coins(user, 1)
    assert failure.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.reason == "INSUFFICIENT_COINS"
    with pytest.raises(BillingClientError) as failure:
        client.get_balance("")
    assert (failure.value.reason, failure.value.metadata) == ("INVALID_FIELD",
                                                              {"field": "user_id"})


def test_auth_errors_are_client_errors_too(service, user):
    with BillingClient(service.grpc_target, token=SHOP_TOKEN) as shop:
        with pytest.raises(BillingClientError) as failure:
            shop.grant_coins(user, 5)
        assert failure.value.reason == "RPC_NOT_ALLOWED"
    with BillingClient(service.grpc_target) as anonymous:
        with pytest.raises(BillingClientError) as failure:
            anonymous.get_balance(user)
        assert failure.value.code is grpc.StatusCode.UNAUTHENTICATED
    with BillingClient(service.grpc_target, token=SHOP_TOKEN) as shop:
        assert SHOP_TOKEN not in repr(shop)


def test_unavailable_is_retried_with_the_same_request_id(client, gateway, user):
    before = gateway.calls.count("create_checkout")
    gateway.unavailable_calls = 2
    checkout = client.create_checkout_session(user, "coins_100", SUCCESS_URL, CANCEL_URL)
    assert gateway.calls.count("create_checkout") == before + 3
    assert checkout.session_id.startswith("cs_")
    again = client.create_checkout_session(user, "coins_100", SUCCESS_URL, CANCEL_URL,
                                           request_id=checkout.request_id)
    assert again.session_id == checkout.session_id  # one Stripe session for the three attempts


def test_a_call_has_a_default_deadline(service, gateway, user):
    gateway.delay_s = 1.0
    try:
        with BillingClient(service.grpc_target, token=ADMIN_TOKEN, timeout=0.2) as hurried, \
                pytest.raises(BillingClientError) as failure:
            hurried.create_checkout_session(user, "coins_100", SUCCESS_URL, CANCEL_URL)
    finally:
        gateway.delay_s = 0.0
    assert failure.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
